// Files: read-only memory maps for checkpoints (zero-copy weights) and atomic writes
// for outputs: data goes to a temporary file in the target's folder and is renamed
// over the target only on commit(), so a failed run leaves the previous file intact.
//
//   LOWBIT_ASSIGN_OR_RETURN(MappedFile in, MappedFile::open("model.safetensors"));
//   std::span<const std::byte> raw = in.bytes();
//   LOWBIT_ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::create("out/model.safetensors"));
//   LOWBIT_RETURN_IF_ERROR(out.write(header));
//   LOWBIT_RETURN_IF_ERROR(out.commit());    // without this, the destructor discards the temp file
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "lowbit/status.h"

namespace lowbit {

// A whole file mapped read-only (PROT_READ, MAP_PRIVATE). Move-only; unmapped on destruction.
class MappedFile {
 public:
  // NotFound if the file does not exist; InvalidArgument for a directory or a non-regular
  // file (device, FIFO: never blocks); IoError for a refused open/mmap. Messages read "cannot open '<path>': <reason>". An empty file
  // gives an empty span (nothing is mapped).
  static Result<MappedFile> open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();

  void* data_ = nullptr;  // page-aligned; null when empty
  size_t size_ = 0;
  std::string path_;
};

// Writes a file atomically: create() makes "<path>.tmp.<pid>-XXXXXX" beside `path` (mode 0666
// less the umask, like a plain open), write() appends, commit() fsyncs it, renames it onto
// `path` and fsyncs the folder. Destroyed without commit(), it removes the temp file.
// write() gathers into an 8 MiB aligned buffer. A file that outgrows it is written with
// O_DIRECT where the file system takes it (whole aligned buffers; commit() pads the last one
// and truncates the file to its length): multi-GB outputs then skip the page cache, whose
// fresh pages cost more CPU time than the disk takes to write them on some VMs (docs/results.md);
// elsewhere, and for smaller files, plain buffered write(2).
class AtomicFile {
 public:
  // InvalidArgument unless check_output_path(path) passes (a directory, symlink or special
  // file); IoError when the temp file cannot be created (folder missing, no permission).
  // Stale temp siblings of dead runs are removed first. The message names `path`.
  static Result<AtomicFile> create(const std::string& path);

  AtomicFile() = default;
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();  // removes the temp file unless committed

  Status write(std::span<const std::byte> data);  // retries short writes and EINTR
  Status write(std::string_view text) { return write(std::as_bytes(std::span(text))); }
  // Once. On failure the temp file is removed and `path` keeps its previous content (unless
  // only the final folder fsync failed). write() or commit() after commit() aborts (LOWBIT_CHECK).
  Status commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }  // empty once committed

 private:
  void discard();
  Status flush_stage(bool last);  // writes the staged bytes (all of them when `last`)

  int fd_ = -1;
  std::string path_;
  std::string temp_path_;
  std::byte* stage_ = nullptr;  // kStageBytes, page-aligned; allocated by the first write()
  size_t staged_ = 0;
  uint64_t flushed_ = 0;        // bytes in the file
  bool direct_ = false;         // O_DIRECT set on fd_
  bool direct_refused_ = false;  // the file system said no: buffered from then on
};

// A work file written at offsets and kept across runs (a streamed save resumed after a crash):
// open() creates it or keeps what an earlier run wrote; write_at() writes anywhere; sync()
// makes it durable. Not atomic: the caller renames it into place when it is whole. A write's
// (of 1 MiB or more) whole 4 KiB pages go out with O_DIRECT (through an aligned 8 MiB buffer), its ragged
// ends through the page cache, as AtomicFile does and with its fallbacks (direct_io_enabled(),
// a file system that refuses O_DIRECT).
class PatchFile {
 public:
  // Creates `path` (truncated unless `keep`) and sizes it to `size` bytes (holes read as zeros).
  static Result<PatchFile> open(const std::string& path, uint64_t size, bool keep);
  PatchFile() = default;
  PatchFile(PatchFile&& other) noexcept;
  PatchFile& operator=(PatchFile&& other) noexcept;
  PatchFile(const PatchFile&) = delete;
  PatchFile& operator=(const PatchFile&) = delete;
  ~PatchFile();
  Status write_at(uint64_t offset, std::span<const std::byte> data);  // retries short writes and EINTR
  Status sync();   // fsync
  Status close();  // fsync + close; write_at() after close() aborts (LOWBIT_CHECK)
  const std::string& path() const { return path_; }
  bool direct() const { return direct_fd_ >= 0; }  // whether large writes still go around the page cache

 private:
  Status write_buffered(uint64_t offset, std::span<const std::byte> data);
  void reset();
  int fd_ = -1;
  int direct_fd_ = -1;        // the same file opened with O_DIRECT; -1 when refused or off
  std::byte* stage_ = nullptr;  // the aligned buffer direct writes go through, allocated on first use
  std::string path_;
};

// Whether large outputs (AtomicFile) and streamed checkpoint reads (DirectRowReader) may use O_DIRECT:
// yes unless the environment says LOWBIT_DIRECT_IO=0 (for a file system that takes O_DIRECT but
// misbehaves with it; where it refuses O_DIRECT outright, both fall back on their own).
bool direct_io_enabled();

// Whether `path` may be replaced by an output: OK when it is missing or a regular file;
// InvalidArgument for a symbolic link (its target is not replaced silently), a directory, or a
// device, FIFO or socket (writing `-o /dev/null` as root must not replace /dev/null).
Status check_output_path(const std::string& path);

// Temp siblings of an output are named "<path>.tmp.<pid>-XXXXXX"; this returns the part before
// XXXXXX for this process. A trailing '/' on `path` is ignored.
std::string temp_sibling_prefix(const std::string& path);
// Removes temp siblings of `path` (files or folders) whose owning process no longer exists:
// what a run killed with SIGKILL left behind. A live owner's temps are kept.
void remove_stale_temps(const std::string& path);

// create + write + commit.
Status write_file_atomic(const std::string& path, std::string_view contents);

// The whole file as bytes in a string; only regular files (a device or FIFO is refused, never
// read without bound or waited on). Errors as MappedFile::open, with "cannot read".
Result<std::string> read_file(const std::string& path);

}  // namespace lowbit
