// Status and Result<T>: how lowbit reports errors that come from files, configs and
// user input. Both are [[nodiscard]]; no exceptions cross the public API. Broken
// internal invariants abort through LOWBIT_CHECK instead.
//
//   Result<MappedFile> f = MappedFile::open(path);
//   if (!f) return f.status();            // message names the file and what was expected
//   LOWBIT_ASSIGN_OR_RETURN(auto g, MappedFile::open(path));
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace lowbit {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // bad flag, bad value, unknown name
  kNotFound = 2,         // missing file or tensor
  kDataLoss = 3,         // corrupt or truncated file
  kUnsupported = 4,      // valid request this build or CPU cannot serve
  kIoError = 5,          // the OS refused a read or write
  kInternal = 6,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid argument: <message>" — the one-line form the CLI prints.
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return {}; }
Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status DataLoss(std::string message);
Status Unsupported(std::string message);
Status IoError(std::string message);
Status Internal(std::string message);

const char* status_code_name(StatusCode code);

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(implicit)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(implicit)
    if (status_.ok()) status_ = Internal("Result constructed from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Status& status() const { return status_; }

  T& value() & { check(); return *value_; }
  const T& value() const& { check(); return *value_; }
  T&& value() && { check(); return std::move(*value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T value_or(T fallback) const& { return ok() ? *value_ : std::move(fallback); }

 private:
  void check() const {
    if (!value_) {
      std::fprintf(stderr, "lowbit: Result::value() on error: %s\n", status_.to_string().c_str());
      std::abort();
    }
  }
  std::optional<T> value_;
  Status status_;
};

[[noreturn]] void check_failed(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace lowbit

#define LOWBIT_CONCAT_INNER_(a, b) a##b
#define LOWBIT_CONCAT_(a, b) LOWBIT_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define LOWBIT_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::lowbit::Status lowbit_status_ = (expr);        \
    if (!lowbit_status_.ok()) return lowbit_status_; \
  } while (0)

#define LOWBIT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

// LOWBIT_ASSIGN_OR_RETURN(auto x, f()) — binds x or returns f()'s error.
#define LOWBIT_ASSIGN_OR_RETURN(lhs, expr) \
  LOWBIT_ASSIGN_OR_RETURN_IMPL_(LOWBIT_CONCAT_(lowbit_result_, __LINE__), lhs, expr)

// Internal invariant: aborts with file:line and the message. Never for user input.
#define LOWBIT_CHECK(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) ::lowbit::check_failed(__FILE__, __LINE__, #cond, std::string{__VA_ARGS__}); \
  } while (0)
