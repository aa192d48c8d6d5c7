#include "lowbit/tensor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace lowbit {
namespace {

TEST(DType, SizesAndNames) {
  struct Case {
    DType dtype;
    size_t size;
    const char* name;
  };
  const Case cases[] = {
      {DType::kF32, 4, "f32"}, {DType::kF64, 8, "f64"}, {DType::kF16, 2, "f16"}, {DType::kBF16, 2, "bf16"},
      {DType::kI8, 1, "i8"},   {DType::kU8, 1, "u8"},   {DType::kI16, 2, "i16"}, {DType::kU16, 2, "u16"},
      {DType::kI32, 4, "i32"}, {DType::kU32, 4, "u32"}, {DType::kI64, 8, "i64"},
  };
  static_assert(std::size(cases) == kNumDTypes);
  for (const Case& c : cases) {
    EXPECT_EQ(dtype_size(c.dtype), c.size) << c.name;
    EXPECT_EQ(dtype_name(c.dtype), c.name);
  }
}

TEST(Tensor, AlignedForManySizes) {
  for (DType dtype : {DType::kU8, DType::kF16, DType::kF32, DType::kF64}) {
    for (int64_t n : {0, 1, 3, 7, 63, 64, 65, 127, 129, 1000, 4097}) {
      Result<Tensor> t = Tensor::empty(dtype, {n});
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % Tensor::kAlignment, 0u) << n;
      EXPECT_EQ(t->numel(), n);
      EXPECT_EQ(t->nbytes(), static_cast<size_t>(n) * dtype_size(dtype));
      EXPECT_EQ(t->dtype(), dtype);
    }
  }
}

TEST(Tensor, ZeroInitialisedEvenWhenMemoryIsReused) {
  for (int64_t n : {1, 17, 1000, 100000}) {
    {
      Result<Tensor> dirty = Tensor::empty(DType::kU8, {n});
      ASSERT_TRUE(dirty.ok());
      std::memset(dirty->data(), 0xAB, dirty->nbytes());
    }
    Result<Tensor> t = Tensor::empty(DType::kU8, {n});
    ASSERT_TRUE(t.ok());
    const uint8_t* p = t->data_as<uint8_t>();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(p[i], 0) << "byte " << i << " of " << n;
  }
}

TEST(Tensor, RejectsBadShapesWithDescriptiveMessages) {
  Result<Tensor> neg = Tensor::empty(DType::kF32, {4, -1});
  ASSERT_FALSE(neg.ok());
  EXPECT_EQ(neg.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(neg.status().message().find("f32 (4, -1)"), std::string::npos) << neg.status().message();
  EXPECT_NE(neg.status().message().find("negative"), std::string::npos);

  const int64_t big = int64_t{1} << 40;
  Result<Tensor> huge = Tensor::empty(DType::kBF16, {big, big});
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("bf16 (1099511627776, 1099511627776)"), std::string::npos)
      << huge.status().message();
  EXPECT_NE(huge.status().message().find("overflow"), std::string::npos);

  // Overflows only once multiplied by the element size.
  Result<Tensor> bytes_overflow = Tensor::empty(DType::kF64, {int64_t{1} << 61});
  EXPECT_FALSE(bytes_overflow.ok());

  Result<Tensor> too_many = Tensor::empty(DType::kF32, {1, 2, 3, 4, 5});
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("(1, 2, 3, 4, 5)"), std::string::npos);

  std::vector<int64_t> dims = {2, 3};
  Result<Tensor> from_span = Tensor::empty(DType::kI32, dims);
  ASSERT_TRUE(from_span.ok());
  EXPECT_EQ(from_span->shape().to_string(), "(2, 3)");
}

TEST(Tensor, MoveTransfersOwnership) {
  Result<Tensor> r = Tensor::empty(DType::kF32, {3, 5});
  ASSERT_TRUE(r.ok());
  Tensor a = std::move(r).value();
  void* p = a.data();
  Tensor b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.numel(), 0);
  EXPECT_EQ(b.numel(), 15);
  Tensor c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.dim(0), 3);
  EXPECT_EQ(c.dim(1), 5);
}

// A (2, 3, 4) i32 tensor whose element [i, j, k] holds 100*i + 10*j + k.
Tensor make_cube() {
  Tensor t = Tensor::empty(DType::kI32, {2, 3, 4}).value();
  int32_t* p = t.data_as<int32_t>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) p[(i * 3 + j) * 4 + k] = 100 * i + 10 * j + k;
  return t;
}

TEST(TensorView, RowMajorStridesAndAt) {
  Tensor t = make_cube();
  TensorView v = t.view();
  EXPECT_EQ(v.ndim(), 3);
  EXPECT_EQ(v.stride(0), 12);
  EXPECT_EQ(v.stride(1), 4);
  EXPECT_EQ(v.stride(2), 1);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.bytes().size(), 96u);
  EXPECT_EQ(v.at<int32_t>(1, 2, 3), 123);
  EXPECT_EQ(v.at<int32_t>(0, 1, 2), 12);
  v.at<int32_t>(1, 0, 0) = -5;
  EXPECT_EQ(t.data_as<int32_t>()[12], -5);
}

TEST(TensorView, RowSelectsAlongDimZero) {
  Tensor t = make_cube();
  TensorView r = t.view().row(1);  // (3, 4)
  ASSERT_EQ(r.ndim(), 2);
  EXPECT_EQ(r.dim(0), 3);
  EXPECT_EQ(r.dim(1), 4);
  EXPECT_TRUE(r.is_contiguous());
  EXPECT_EQ(r.data_as<int32_t>(), t.data_as<int32_t>() + 12);
  for (int j = 0; j < 3; ++j)
    for (int k = 0; k < 4; ++k) EXPECT_EQ(r.at<int32_t>(j, k), 100 + 10 * j + k);
  TensorView rr = r.row(2);  // (4,)
  ASSERT_EQ(rr.ndim(), 1);
  EXPECT_EQ(rr.at<int32_t>(3), 123);
  TensorView scalar = rr.row(1);  // ()
  EXPECT_EQ(scalar.ndim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.at<int32_t>(), 121);
}

TEST(TensorView, SliceOffsetsAndKeepsStrides) {
  Tensor t = make_cube();
  TensorView s = t.view().slice(2, 1, 3);  // (2, 3, 2)
  EXPECT_EQ(s.dim(2), 2);
  EXPECT_EQ(s.stride(1), 4);
  EXPECT_FALSE(s.is_contiguous());
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) EXPECT_EQ(s.at<int32_t>(i, j, k), 100 * i + 10 * j + k + 1);

  TensorView s1 = t.view().slice(1, 1, 3);  // (2, 2, 4)
  EXPECT_FALSE(s1.is_contiguous());
  EXPECT_EQ(s1.at<int32_t>(1, 0, 0), 110);

  TensorView s0 = t.view().slice(0, 1, 2);  // (1, 3, 4): contiguous
  EXPECT_TRUE(s0.is_contiguous());
  EXPECT_EQ(s0.bytes().size(), 48u);
  EXPECT_EQ(reinterpret_cast<const int32_t*>(s0.bytes().data())[0], 100);

  TensorView empty = t.view().slice(2, 2, 2);
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_TRUE(empty.is_contiguous());
}

TEST(TensorView, TransposeSwapsStridesWithoutCopy) {
  Tensor t = make_cube();
  TensorView tr = t.view().transpose(0, 2);  // (4, 3, 2)
  EXPECT_EQ(tr.data(), t.data());
  EXPECT_EQ(tr.dim(0), 4);
  EXPECT_EQ(tr.dim(2), 2);
  EXPECT_EQ(tr.stride(0), 1);
  EXPECT_EQ(tr.stride(2), 12);
  EXPECT_FALSE(tr.is_contiguous());
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) EXPECT_EQ(tr.at<int32_t>(k, j, i), 100 * i + 10 * j + k);
  // Transposing back restores the original layout; rows of a transpose stride through memory.
  EXPECT_TRUE(tr.transpose(0, 2).is_contiguous());
  EXPECT_EQ(tr.row(3).at<int32_t>(2, 1), 123);
}

TEST(TensorView, ExplicitStridesOverForeignBuffer) {
  // A (3, 2) view of every other column of a (3, 4) row-major float buffer.
  float buf[12];
  for (int i = 0; i < 12; ++i) buf[i] = static_cast<float>(i);
  TensorView v(buf, DType::kF32, {3, 2}, {4, 2});
  EXPECT_FALSE(v.is_contiguous());
  EXPECT_EQ(v.at<float>(2, 1), 10.0f);
  EXPECT_EQ(v.at<float>(1, 0), 4.0f);
  ConstTensorView c = v;  // mutable converts to const
  EXPECT_EQ(c.at<float>(2, 1), 10.0f);
  static_assert(std::is_same_v<decltype(c.data_as<float>()), const float*>);
  static_assert(std::is_same_v<decltype(v.data_as<float>()), float*>);
  static_assert(!std::is_convertible_v<ConstTensorView, TensorView>);

  const std::vector<int64_t> dims = {12};
  ConstTensorView flat(static_cast<const void*>(buf), DType::kF32, dims);
  EXPECT_TRUE(flat.is_contiguous());
  EXPECT_EQ(flat.bytes().size(), sizeof(buf));
  // Size-1 dims do not break contiguity whatever their stride.
  EXPECT_TRUE(TensorView(buf, DType::kF32, {1, 12}, {999, 1}).is_contiguous());
}

TEST(TensorViewDeathTest, MisuseAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Tensor t = Tensor::empty(DType::kF32, {2, 3}).value();
  EXPECT_DEATH((void)t.view().data_as<double>(), "sizeof\\(T\\) does not match dtype f32");
  EXPECT_DEATH((void)t.view().at<float>(2, 0), "index out of range");
  EXPECT_DEATH((void)t.view().slice(1, 2, 4), "bad range");
  EXPECT_DEATH((void)t.view().transpose(0, 1).bytes(), "non-contiguous");
}

}  // namespace
}  // namespace lowbit
