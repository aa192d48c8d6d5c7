#include "lowbit/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace lowbit {
namespace {

namespace fs = std::filesystem;

// Each test gets a fresh folder under the system temp dir, removed afterwards.
class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("lowbit_core_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static void write_plain(const std::string& p, const std::string& contents) {
    std::ofstream(p, std::ios::binary) << contents;
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path dir_;
};

std::string as_string(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

TEST_F(FileTest, MappedFileReadsBackContents) {
  std::string contents;
  for (int i = 0; i < 10000; ++i) contents.push_back(static_cast<char>(i * 7));
  write_plain(path("w.bin"), contents);
  Result<MappedFile> f = MappedFile::open(path("w.bin"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->size(), contents.size());
  EXPECT_EQ(f->path(), path("w.bin"));
  EXPECT_EQ(as_string(f->bytes()), contents);

  MappedFile moved = std::move(f).value();
  EXPECT_EQ(as_string(moved.bytes()), contents);
  MappedFile other;
  other = std::move(moved);
  EXPECT_EQ(as_string(other.bytes()), contents);
  EXPECT_EQ(moved.size(), 0u);  // NOLINT(bugprone-use-after-move)
}

TEST_F(FileTest, MappedFileMissingNamesThePath) {
  const std::string missing = path("no_such_model.safetensors");
  Result<MappedFile> f = MappedFile::open(missing);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("'" + missing + "'"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("No such file"), std::string::npos) << f.status().message();
}

TEST_F(FileTest, MappedFileEmptyAndDirectory) {
  write_plain(path("empty"), "");
  Result<MappedFile> f = MappedFile::open(path("empty"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->size(), 0u);
  EXPECT_TRUE(f->bytes().empty());

  Result<MappedFile> d = MappedFile::open(dir_.string());
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("directory"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find(dir_.string()), std::string::npos);
}

TEST_F(FileTest, MappedFileRejectsFifoWithoutBlocking) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  Result<MappedFile> f = MappedFile::open(path("fifo"));
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("not a regular file"), std::string::npos) << f.status().message();
}

TEST_F(FileTest, AtomicFileCommitReplaces) {
  const std::string out = path("out.bin");
  write_plain(out, "old contents that are longer");
  Result<AtomicFile> f = AtomicFile::create(out);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const std::string temp = f->temp_path();
  EXPECT_EQ(temp.rfind(out + ".tmp.", 0), 0u) << temp;
  EXPECT_TRUE(fs::exists(temp));
  ASSERT_TRUE(f->write("new ").ok());
  std::vector<std::byte> more(100000, std::byte{0x5A});
  ASSERT_TRUE(f->write(more).ok());
  EXPECT_EQ(read_file(out).value(), "old contents that are longer") << "visible only after commit";
  ASSERT_TRUE(f->commit().ok());
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_TRUE(f->temp_path().empty());
  Result<std::string> back = read_file(out);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->size(), 4u + more.size());
  EXPECT_EQ(back->substr(0, 6), "new ZZ");
  EXPECT_EQ(entries(), std::vector<std::string>{"out.bin"});
}

// Files that outgrow the 8 MiB write buffer go out with O_DIRECT where the file system takes it
// (the temp dir here: ext4 on the CI machines) and buffered where it does not (tmpfs may refuse):
// either way every byte comes back, the length is exact (the padded last block is cut off), and
// sizes at and around the buffer's edges behave.
TEST_F(FileTest, AtomicFileLargeFilesRoundTripOnEveryFileSystem) {
  constexpr size_t kStage = size_t{8} << 20;
  std::vector<fs::path> dirs = {dir_};
  if (fs::is_directory("/dev/shm")) {
    dirs.push_back(fs::path("/dev/shm") / ("lowbit_core_direct_" + std::to_string(::getpid())));
    fs::create_directories(dirs.back());
  }
  for (const bool direct : {true, false}) {  // LOWBIT_DIRECT_IO=0: buffered writes throughout
  if (!direct) ::setenv("LOWBIT_DIRECT_IO", "0", 1);
  for (const fs::path& d : dirs) {
    for (const size_t total : {kStage - 1, kStage, kStage + 1, kStage + 4096, 2 * kStage + 12345}) {
      std::vector<std::byte> data(total);
      uint64_t x = total;
      for (std::byte& b : data) b = static_cast<std::byte>((x = x * 6364136223846793005ull + 1442695040888963407ull) >> 56);
      const std::string out = (d / "big.bin").string();
      Result<AtomicFile> f = AtomicFile::create(out);
      ASSERT_TRUE(f.ok()) << f.status().to_string();
      size_t at = 0, piece = 1;
      while (at < total) {  // odd pieces: 1, 4098, ... bytes, some crossing the buffer's end
        const size_t k = std::min(total - at, piece);
        ASSERT_TRUE(f->write(std::span<const std::byte>(data).subspan(at, k)).ok());
        at += k;
        piece = piece * 4097 % 5000011 + 1;
      }
      ASSERT_TRUE(f->commit().ok()) << out;
      Result<std::string> back = read_file(out);
      ASSERT_TRUE(back.ok()) << back.status().to_string();
      ASSERT_EQ(back->size(), total) << d << " " << total;
      EXPECT_EQ(std::memcmp(back->data(), data.data(), total), 0) << d << " " << total;
    }
  }
  ::unsetenv("LOWBIT_DIRECT_IO");
  }
  std::error_code ec;
  if (dirs.size() > 1) fs::remove_all(dirs.back(), ec);
}

// PatchFile's writes at any offsets — small ones, large ones whose whole pages go out with O_DIRECT
// and whose ragged ends through the page cache, rewrites over both (a resumed run), a file kept
// by a second open — read back as a byte array written the same way, on ext4 and tmpfs, direct
// and buffered.
TEST_F(FileTest, PatchFileWritesAnywhereOnEveryFileSystem) {
  std::vector<fs::path> dirs = {dir_};
  if (fs::is_directory("/dev/shm")) {
    dirs.push_back(fs::path("/dev/shm") / ("lowbit_core_patch_" + std::to_string(::getpid())));
    fs::create_directories(dirs.back());
  }
  constexpr uint64_t kSize = (uint64_t{20} << 20) + 777;
  for (const bool direct : {true, false}) {  // LOWBIT_DIRECT_IO=0: buffered writes throughout
    if (!direct) ::setenv("LOWBIT_DIRECT_IO", "0", 1);
    for (const fs::path& d : dirs) {
      const std::string out = (d / "patch.bin").string();
      std::vector<std::byte> want(kSize, std::byte{0});
      uint64_t x = 12345;
      const auto next = [&] { return (x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
      // (offset, size): unaligned and aligned starts and ends, under and over 1 MiB and the 8 MiB buffer,
      // the first page, the file's last byte, and later writes over earlier ones.
      const std::vector<std::pair<uint64_t, uint64_t>> writes = {
          {0, 100}, {100, (uint64_t{9} << 20) + 5}, {4096, 1 << 20}, {(uint64_t{3} << 20) + 17, (uint64_t{1} << 20) - 1},
          {uint64_t{12} << 20, uint64_t{8} << 20}, {(uint64_t{11} << 20) + 4095, (uint64_t{2} << 20) + 2}, {kSize - 5000, 5000},
          {kSize - (uint64_t{3} << 20) - 3, (uint64_t{3} << 20) + 3}, {1, kSize - 2}};
      for (int pass = 0; pass < 2; ++pass) {  // the second keeps the file and rewrites half of it
        Result<PatchFile> f = PatchFile::open(out, kSize, /*keep=*/pass == 1);
        ASSERT_TRUE(f.ok()) << f.status().to_string();
        if (!direct) {
          EXPECT_FALSE(f->direct());
        }
        for (size_t i = pass; i < writes.size(); i += 1 + pass) {
          const auto [off, n] = writes[i];
          std::vector<std::byte> bytes(n);
          for (std::byte& b : bytes) b = static_cast<std::byte>(next());
          std::memcpy(want.data() + off, bytes.data(), n);
          ASSERT_TRUE(f->write_at(off, bytes).ok()) << d << " write " << i;
        }
        ASSERT_TRUE(f->close().ok());
        Result<std::string> back = read_file(out);
        ASSERT_TRUE(back.ok()) << back.status().to_string();
        ASSERT_EQ(back->size(), kSize) << d;
        EXPECT_EQ(std::memcmp(back->data(), want.data(), kSize), 0) << d << " pass " << pass << (direct ? " direct" : " buffered");
      }
    }
    ::unsetenv("LOWBIT_DIRECT_IO");
  }
  std::error_code ec;
  if (dirs.size() > 1) fs::remove_all(dirs.back(), ec);
}

TEST_F(FileTest, AtomicFileCreatesWithUmaskMode) {
  const mode_t old = ::umask(022);
  ASSERT_TRUE(write_file_atomic(path("m"), "x").ok());
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(path("m").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(FileTest, UncommittedAtomicFileLeavesPreviousIntact) {
  const std::string out = path("model.safetensors");
  write_plain(out, "previous");
  {
    Result<AtomicFile> f = AtomicFile::create(out);
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->write("half-written garbage").ok());
    AtomicFile moved = std::move(f).value();  // ownership of the temp file moves too
    ASSERT_TRUE(moved.write(" more").ok());
    // "the run fails": destroyed without commit()
  }
  EXPECT_EQ(read_file(out).value(), "previous");
  EXPECT_EQ(entries(), std::vector<std::string>{"model.safetensors"});

  {  // a target that did not exist before stays absent
    Result<AtomicFile> f = AtomicFile::create(path("fresh"));
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->write("x").ok());
  }
  EXPECT_FALSE(fs::exists(path("fresh")));
  EXPECT_EQ(entries(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(FileTest, AtomicFileErrorsNameThePath) {
  const std::string nodir = path("missing_dir/out.bin");
  Result<AtomicFile> f = AtomicFile::create(nodir);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'" + nodir + "'"), std::string::npos) << f.status().message();

  Status s = write_file_atomic(dir_.string(), "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("is a directory"), std::string::npos) << s.message();
  EXPECT_EQ(entries(), std::vector<std::string>{});
}

TEST_F(FileTest, WriteFileAtomicAndReadFileRoundTrip) {
  std::string contents = "line one\n";
  contents.push_back('\0');
  contents += std::string(200000, 'q');
  ASSERT_TRUE(write_file_atomic(path("a.txt"), contents).ok());
  Result<std::string> back = read_file(path("a.txt"));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, contents);
  ASSERT_TRUE(write_file_atomic(path("a.txt"), "").ok());
  EXPECT_EQ(read_file(path("a.txt")).value(), "");

  Result<std::string> missing = read_file(path("nope.txt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("cannot read '" + path("nope.txt") + "'"), std::string::npos);
  EXPECT_FALSE(read_file(dir_.string()).ok());
}

TEST(ReadFile, ReadsFilesThatReportSizeZero) {
  Result<std::string> r = read_file("/proc/self/status");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NE(r->find("Name:"), std::string::npos);
}

TEST_F(FileTest, OutputsNeverReplaceSpecialFilesOrSymlinks) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  write_plain(path("victim"), "keep");
  fs::create_symlink(path("victim"), path("link"));
  for (const char* name : {"fifo", "link"}) {
    Status s = write_file_atomic(path(name), "x");
    ASSERT_FALSE(s.ok()) << name;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    EXPECT_NE(s.message().find(path(name)), std::string::npos) << s.message();
  }
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(path("fifo"))));
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(path("link"))));
  EXPECT_EQ(read_file(path("victim")).value(), "keep");
  EXPECT_EQ(check_output_path(dir_.string()).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(check_output_path(path("victim")).ok());
  EXPECT_TRUE(check_output_path(path("absent")).ok());
  if (::geteuid() == 0) {  // a /dev/null twin made here; the real one is never touched
    ASSERT_EQ(::mknod(path("null").c_str(), S_IFCHR | 0666, ::makedev(1, 3)), 0);
    Status s = write_file_atomic(path("null"), "x");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    EXPECT_NE(s.message().find("device"), std::string::npos) << s.message();
    EXPECT_TRUE(fs::is_character_file(fs::symlink_status(path("null"))));
  }
  for (const std::string& e : entries()) EXPECT_EQ(e.find(".tmp."), std::string::npos) << e;
}

TEST_F(FileTest, ReadFileRefusesDevicesFifosAndFolders) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  for (const std::string& p : {path("fifo"), dir_.string(), std::string("/dev/zero")}) {
    Result<std::string> r = read_file(p);  // must neither block (FIFO) nor read forever (/dev/zero)
    ASSERT_FALSE(r.ok()) << p;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().message();
    EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
  }
  Result<MappedFile> m = MappedFile::open("/dev/zero");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(FileTest, StaleTempsOfDeadRunsAreRemoved) {
  // A pid that is certainly dead: a child that has exited and been reaped.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string dead_file = path("out.bin.tmp." + std::to_string(child) + "-AAAAAA");
  const std::string dead_dir = path("out.bin.tmp." + std::to_string(child) + "-BBBBBB");
  const std::string live = path("out.bin.tmp.1-CCCCCC");  // pid 1 always exists
  const std::string other = path("other.bin.tmp." + std::to_string(child) + "-DDDDDD");
  write_plain(dead_file, "x");
  fs::create_directory(dead_dir);
  write_plain(dead_dir + "/model.safetensors", "x");
  write_plain(live, "x");
  write_plain(other, "x");
  EXPECT_EQ(temp_sibling_prefix(path("out.bin")), path("out.bin.tmp." + std::to_string(::getpid()) + "-"));
  EXPECT_EQ(temp_sibling_prefix(path("out") + "/"), path("out.tmp." + std::to_string(::getpid()) + "-"));
  ASSERT_TRUE(write_file_atomic(path("out.bin"), "new").ok());
  EXPECT_FALSE(fs::exists(dead_file));
  EXPECT_FALSE(fs::exists(dead_dir));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(other)) << "temps of another output are not this one's business";
}

}  // namespace
}  // namespace lowbit
