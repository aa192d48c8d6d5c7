#include "lowbit/file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>

namespace lowbit {
namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

// NotFound for a missing file or folder; IoError for everything else the OS refuses.
Status errno_status(int err, const std::string& what) {
  std::string msg = what + ": " + errno_text(err);
  return err == ENOENT ? NotFound(std::move(msg)) : IoError(std::move(msg));
}

std::string quote_path(const std::string& path) { return "'" + path + "'"; }

// Why a file of this mode cannot be read as data (it is not a regular file).
std::string kind_error(mode_t mode) {
  if (S_ISDIR(mode)) return ": is a directory";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return ": is a device, not a regular file";
  if (S_ISFIFO(mode)) return ": is a FIFO, not a regular file";
  return ": not a regular file";
}

// Six filename-safe characters; uniqueness is enforced by O_EXCL, this only makes
// collisions between concurrent writers unlikely.
std::string temp_suffix() {
  static std::atomic<uint64_t> counter{0};
  uint64_t x = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
               (static_cast<uint64_t>(::getpid()) << 32) ^ counter.fetch_add(0x9E3779B97F4A7C15ull);
  // splitmix64 finaliser
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out(6, 'X');
  for (char& c : out) {
    c = kChars[x % 62];
    x /= 62;
  }
  return out;
}

std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// The pid a temp name "<name>.tmp.<pid>-XXXXXX[...]" carries after `prefix` ("<name>.tmp."), or -1.
pid_t temp_owner(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return -1;
  name.remove_prefix(prefix.size());
  const size_t dash = name.find('-');
  if (dash == 0 || dash == std::string_view::npos || dash > 9) return -1;
  pid_t pid = 0;
  for (size_t i = 0; i < dash; ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    pid = pid * 10 + (name[i] - '0');
  }
  return pid > 0 ? pid : -1;
}

}  // namespace

std::string temp_sibling_prefix(const std::string& path) {
  std::filesystem::path p(path);
  if (p.filename().empty()) p = p.parent_path();  // "out/"
  return p.string() + ".tmp." + std::to_string(::getpid()) + "-";
}

void remove_stale_temps(const std::string& path) {
  std::filesystem::path p(path);
  if (p.filename().empty()) p = p.parent_path();
  const std::string prefix = p.filename().string() + ".tmp.";
  std::error_code ec;
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const pid_t pid = temp_owner(name, prefix);
    if (pid < 0 || pid == ::getpid()) continue;
    // kill(pid, 0) fails with ESRCH only when no such process exists: a live owner (or one
    // we may not signal, EPERM) keeps its temp files.
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    std::filesystem::remove_all(it->path(), rm);
  }
}

Status check_output_path(const std::string& path) {
  const std::string what = "cannot write " + quote_path(path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return OkStatus();
    return errno_status(errno, what);
  }
  if (S_ISLNK(st.st_mode)) {
    return InvalidArgument(what + ": is a symbolic link; not replacing it (name its target instead)");
  }
  if (S_ISDIR(st.st_mode)) return InvalidArgument(what + ": is a directory");
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(what + ": is a device, FIFO or socket, not a regular file; not replacing it");
  }
  return OkStatus();
}

// ---- MappedFile ----

Result<MappedFile> MappedFile::open(const std::string& path) {
  const std::string what = "cannot open " + quote_path(path);
  // O_NONBLOCK so that opening a FIFO by mistake fails below instead of hanging.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(errno, what);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return errno_status(err, what);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(what + kind_error(st.st_mode));
  }
  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ > 0) {
    void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return IoError("cannot map " + quote_path(path) + ": " + errno_text(err));
    }
    f.data_ = p;
  }
  ::close(fd);  // the mapping keeps the file alive
  return f;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

MappedFile::~MappedFile() { reset(); }

void MappedFile::reset() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

// ---- AtomicFile ----

Result<AtomicFile> AtomicFile::create(const std::string& path) {
  if (path.empty()) return InvalidArgument("cannot write '': empty output path");
  LOWBIT_RETURN_IF_ERROR(check_output_path(path));
  remove_stale_temps(path);
  constexpr int kAttempts = 100;
  for (int i = 0; i < kAttempts; ++i) {
    std::string temp = temp_sibling_prefix(path) + temp_suffix();
    // Not mkstemp: its mode 0600 would leak into the final file. 0666 less the umask is
    // what a plain open (or a shell redirect) would create.
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      AtomicFile f;
      f.fd_ = fd;
      f.path_ = path;
      f.temp_path_ = std::move(temp);
      return f;
    }
    const int err = errno;
    if (err != EEXIST) return errno_status(err, "cannot write " + quote_path(path) + ": creating temp file");
  }
  return IoError("cannot write " + quote_path(path) + ": no free temp file name after " +
                 std::to_string(kAttempts) + " attempts");
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      temp_path_(std::exchange(other.temp_path_, std::string())),
      stage_(std::exchange(other.stage_, nullptr)),
      staged_(std::exchange(other.staged_, 0)),
      flushed_(std::exchange(other.flushed_, 0)),
      direct_(std::exchange(other.direct_, false)),
      direct_refused_(std::exchange(other.direct_refused_, false)) {}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    discard();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    temp_path_ = std::exchange(other.temp_path_, std::string());
    stage_ = std::exchange(other.stage_, nullptr);
    staged_ = std::exchange(other.staged_, 0);
    flushed_ = std::exchange(other.flushed_, 0);
    direct_ = std::exchange(other.direct_, false);
    direct_refused_ = std::exchange(other.direct_refused_, false);
  }
  return *this;
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
  std::free(stage_);
  stage_ = nullptr;
  staged_ = 0;
}

namespace {
constexpr size_t kStageBytes = size_t{8} << 20;  // a multiple of every O_DIRECT alignment in use
constexpr size_t kDirectAlign = 4096;

// write(2) of all of [p, p + n), retrying short writes and EINTR; the errno of a failure.
int write_all(int fd, const std::byte* p, size_t n) {
  constexpr size_t kMaxChunk = size_t{1} << 30;  // Linux caps one write(2) near 2 GiB
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n < kMaxChunk ? n : kMaxChunk);
    if (k < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return 0;
}
}  // namespace

bool direct_io_enabled() {
  const char* v = std::getenv("LOWBIT_DIRECT_IO");
  return v == nullptr || std::string_view(v) != "0";
}

Status AtomicFile::flush_stage(bool last) {
  if (staged_ == 0) return OkStatus();
  // The first full buffer asks for O_DIRECT; a file that never fills one is written buffered.
  if (!direct_ && !direct_refused_ && !last && direct_io_enabled()) {
    const int flags = ::fcntl(fd_, F_GETFL);
    direct_ = flags >= 0 && ::fcntl(fd_, F_SETFL, flags | O_DIRECT) == 0;
    direct_refused_ = !direct_;
  }
  // Direct writes are whole aligned blocks at aligned offsets (every earlier one was a full
  // buffer): the last is padded with zeros, and the file cut back to its length after it.
  size_t n = direct_ ? (staged_ + kDirectAlign - 1) / kDirectAlign * kDirectAlign : staged_;
  std::memset(stage_ + staged_, 0, n - staged_);
  int err = write_all(fd_, stage_, n);
  if ((err == EINVAL || err == EOPNOTSUPP) && direct_) {  // accepted by fcntl, refused by the file system: buffered
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0 && ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) == 0 &&
        ::lseek(fd_, static_cast<off_t>(flushed_), SEEK_SET) == static_cast<off_t>(flushed_)) {
      direct_ = false;
      direct_refused_ = true;
      n = staged_;
      err = write_all(fd_, stage_, n);
    }
  }
  if (err != 0) return IoError("cannot write " + quote_path(path_) + ": " + errno_text(err));
  const bool padded = n > staged_;
  flushed_ += staged_;
  staged_ = 0;
  if (padded && ::ftruncate(fd_, static_cast<off_t>(flushed_)) != 0) {
    return IoError("cannot write " + quote_path(path_) + ": truncating to its length: " + errno_text(errno));
  }
  return OkStatus();
}

Status AtomicFile::write(std::span<const std::byte> data) {
  LOWBIT_CHECK(fd_ >= 0, "AtomicFile::write after commit() or on a moved-from object");
  if (stage_ == nullptr && !data.empty()) {
    stage_ = static_cast<std::byte*>(std::aligned_alloc(kDirectAlign, kStageBytes));
    if (stage_ == nullptr) return IoError("cannot write " + quote_path(path_) + ": no memory for the write buffer");
  }
  while (!data.empty()) {
    const size_t k = std::min(data.size(), kStageBytes - staged_);
    std::memcpy(stage_ + staged_, data.data(), k);
    staged_ += k;
    data = data.subspan(k);
    if (staged_ == kStageBytes) LOWBIT_RETURN_IF_ERROR(flush_stage(false));
  }
  return OkStatus();
}

Result<PatchFile> PatchFile::open(const std::string& path, uint64_t size, bool keep) {
  LOWBIT_RETURN_IF_ERROR(check_output_path(path));
  PatchFile f;
  f.path_ = path;
  f.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | (keep ? 0 : O_TRUNC), 0666);
  if (f.fd_ < 0) return IoError("cannot open " + quote_path(path) + ": " + errno_text(errno));
  if (::ftruncate(f.fd_, static_cast<off_t>(size)) != 0) return IoError("cannot size " + quote_path(path) + ": " + errno_text(errno));
  if (direct_io_enabled()) f.direct_fd_ = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);  // -1: buffered only
  return f;
}

PatchFile::PatchFile(PatchFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), direct_fd_(std::exchange(other.direct_fd_, -1)),
      stage_(std::exchange(other.stage_, nullptr)), path_(std::move(other.path_)) {}

PatchFile& PatchFile::operator=(PatchFile&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = std::exchange(other.fd_, -1);
    direct_fd_ = std::exchange(other.direct_fd_, -1);
    stage_ = std::exchange(other.stage_, nullptr);
    path_ = std::move(other.path_);
  }
  return *this;
}

void PatchFile::reset() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
  fd_ = direct_fd_ = -1;
  std::free(stage_);
  stage_ = nullptr;
}

PatchFile::~PatchFile() { reset(); }

Status PatchFile::write_buffered(uint64_t offset, std::span<const std::byte> data) {
  constexpr size_t kMaxChunk = size_t{1} << 30;
  const std::byte* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::pwrite(fd_, p, left < kMaxChunk ? left : kMaxChunk, static_cast<off_t>(offset));
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      return IoError("cannot write " + quote_path(path_) + ": " + errno_text(err));
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    left -= static_cast<size_t>(n);
  }
  return OkStatus();
}

Status PatchFile::write_at(uint64_t offset, std::span<const std::byte> data) {
  LOWBIT_CHECK(fd_ >= 0, "PatchFile::write_at after close() or on a moved-from object");
  // Whole aligned pages of a write of at least 1 MiB go out with O_DIRECT; the ragged
  // ends (and small writes) through the page cache. Linux keeps the two coherent: a direct write
  // flushes and drops cached pages of its range first, and a page written buffered next to it is
  // read back from the disk before it is modified.
  const uint64_t a0 = (offset + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
  const uint64_t end = offset + data.size(), a1 = end / kDirectAlign * kDirectAlign;
  if (direct_fd_ < 0 || data.size() < (size_t{1} << 20) || a1 <= a0) return write_buffered(offset, data);
  if (stage_ == nullptr) {
    stage_ = static_cast<std::byte*>(std::aligned_alloc(kDirectAlign, kStageBytes));
    if (stage_ == nullptr) return write_buffered(offset, data);
  }
  LOWBIT_RETURN_IF_ERROR(write_buffered(offset, data.first(static_cast<size_t>(a0 - offset))));
  uint64_t at = a0;
  while (at < a1 && direct_fd_ >= 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kStageBytes, a1 - at));
    std::memcpy(stage_, data.data() + (at - offset), n);
    size_t done = 0;
    while (done < n) {
      const ssize_t k = ::pwrite(direct_fd_, stage_ + done, n - done, static_cast<off_t>(at + done));
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) {  // refused by the file system: buffered from here on
        ::close(direct_fd_);
        direct_fd_ = -1;
        break;
      }
      if (k < 0) return IoError("cannot write " + quote_path(path_) + ": " + errno_text(errno));
      done += static_cast<size_t>(k);
    }
    at += done;
  }
  return write_buffered(at, data.subspan(static_cast<size_t>(at - offset)));
}

Status PatchFile::sync() {
  LOWBIT_CHECK(fd_ >= 0, "PatchFile::sync after close() or on a moved-from object");
  if (::fsync(fd_) != 0) return IoError("cannot write " + quote_path(path_) + ": fsync: " + errno_text(errno));
  return OkStatus();
}

Status PatchFile::close() {
  LOWBIT_RETURN_IF_ERROR(sync());
  if (direct_fd_ >= 0) ::close(direct_fd_);
  direct_fd_ = -1;
  std::free(stage_);
  stage_ = nullptr;
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return IoError("cannot write " + quote_path(path_) + ": close: " + errno_text(errno));
  return OkStatus();
}

Status AtomicFile::commit() {
  LOWBIT_CHECK(fd_ >= 0, "AtomicFile::commit twice or on a moved-from object");
  const std::string what = "cannot write " + quote_path(path_);
  if (Status st = flush_stage(true); !st.ok()) {
    discard();
    return st;
  }
  if (::fsync(fd_) != 0) {
    const int err = errno;
    discard();
    return IoError(what + ": fsync: " + errno_text(err));
  }
  const int close_rc = ::close(fd_);
  fd_ = -1;
  if (close_rc != 0) {
    const int err = errno;
    discard();
    return IoError(what + ": close: " + errno_text(err));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    discard();
    return IoError(what + ": rename from " + quote_path(temp_path_) + ": " + errno_text(err));
  }
  temp_path_.clear();
  // Make the rename itself durable. Some filesystems cannot fsync a folder (EINVAL);
  // the data is still in place then.
  const std::string dir = parent_dir(path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    const int err = errno;
    return IoError(what + ": opening folder " + quote_path(dir) + ": " + errno_text(err));
  }
  const int sync_rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (sync_rc != 0 && err != EINVAL && err != ENOTSUP) {
    return IoError(what + ": fsync folder " + quote_path(dir) + ": " + errno_text(err));
  }
  return OkStatus();
}

Status write_file_atomic(const std::string& path, std::string_view contents) {
  LOWBIT_ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::create(path));
  LOWBIT_RETURN_IF_ERROR(f.write(contents));
  return f.commit();
}

// ---- read_file ----

Result<std::string> read_file(const std::string& path) {
  const std::string what = "cannot read " + quote_path(path);
  // O_NONBLOCK: a FIFO is refused below instead of blocking the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(errno, what);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return errno_status(err, what);
  }
  // Only regular files: a device (/dev/zero) never ends and a FIFO may block; either would let
  // an input allocate without bound. The buffer is the size the file has.
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(what + kind_error(st.st_mode));
  }
  // Files that report size 0 (/proc, /sys) are read to their end, up to kUnsizedLimit.
  constexpr size_t kUnsizedLimit = size_t{1} << 28;
  const size_t size = static_cast<size_t>(st.st_size);
  const bool unsized = size == 0;
  std::string out(unsized ? 4096 : size, '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      const int err = errno;
      ::close(fd);
      return IoError(what + ": " + errno_text(err));
    }
    if (n == 0) break;  // the end (or the file shrank while we read)
    got += static_cast<size_t>(n);
    if (unsized && got == out.size()) {
      if (out.size() >= kUnsizedLimit) {
        ::close(fd);
        return InvalidArgument(what + ": reports size 0 but holds more than 256 MiB");
      }
      out.resize(out.size() * 2);
    }
  }
  ::close(fd);
  out.resize(got);
  return out;
}

}  // namespace lowbit
