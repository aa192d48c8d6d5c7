#include "lowbit/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace lowbit {
namespace {

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE(static_cast<bool>(s));
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.to_string(), "ok");
  EXPECT_TRUE(OkStatus().ok());
}

TEST(Status, ErrorsCarryCodeAndMessage) {
  struct Case {
    Status s;
    StatusCode code;
    const char* prefix;
  };
  const Case cases[] = {
      {InvalidArgument("m"), StatusCode::kInvalidArgument, "invalid argument: m"},
      {NotFound("m"), StatusCode::kNotFound, "not found: m"},
      {DataLoss("m"), StatusCode::kDataLoss, "data loss: m"},
      {Unsupported("m"), StatusCode::kUnsupported, "unsupported: m"},
      {IoError("m"), StatusCode::kIoError, "i/o error: m"},
      {Internal("m"), StatusCode::kInternal, "internal error: m"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.s.ok());
    EXPECT_FALSE(static_cast<bool>(c.s));
    EXPECT_EQ(c.s.code(), c.code);
    EXPECT_EQ(c.s.message(), "m");
    EXPECT_EQ(c.s.to_string(), c.prefix);
  }
}

TEST(Result, HoldsValueOrError) {
  Result<int> good = 7;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 7);
  EXPECT_EQ(good.value_or(-1), 7);
  EXPECT_TRUE(good.status().ok());

  Result<int> bad = NotFound("no such tensor 'w'");
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.value_or(-1), -1);
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(bad.status().message(), "no such tensor 'w'");
}

TEST(Result, FromOkStatusBecomesInternalError) {
  Result<int> r = OkStatus();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(Result, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(5);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 5);
}

Result<int> parse_positive(int x) {
  if (x <= 0) return InvalidArgument("expected a positive value, got " + std::to_string(x));
  return x;
}

Result<int> doubled(int x, int* reached) {
  LOWBIT_ASSIGN_OR_RETURN(int v, parse_positive(x));
  *reached = 1;
  return 2 * v;
}

Status check_both(int a, int b, int* reached) {
  LOWBIT_RETURN_IF_ERROR(parse_positive(a).status());
  LOWBIT_RETURN_IF_ERROR(parse_positive(b).status());
  *reached = 1;
  return OkStatus();
}

TEST(Macros, AssignOrReturnPropagates) {
  int reached = 0;
  Result<int> ok = doubled(4, &reached);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 8);
  EXPECT_EQ(reached, 1);

  reached = 0;
  Result<int> bad = doubled(-3, &reached);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(reached, 0);  // returned before the line after the macro
  EXPECT_EQ(bad.status().to_string(), "invalid argument: expected a positive value, got -3");
}

TEST(Macros, ReturnIfErrorPropagatesFirstError) {
  int reached = 0;
  EXPECT_TRUE(check_both(1, 2, &reached).ok());
  EXPECT_EQ(reached, 1);

  reached = 0;
  Status s = check_both(1, -2, &reached);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(s.message(), "expected a positive value, got -2");
}

TEST(CheckDeathTest, FailedCheckAbortsWithMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(LOWBIT_CHECK(1 + 1 == 3, "arithmetic is broken"), "internal check failed.*arithmetic is broken");
  Result<int> bad = DataLoss("truncated 'x.bin'");
  EXPECT_DEATH((void)bad.value(), "truncated 'x.bin'");
}

}  // namespace
}  // namespace lowbit
