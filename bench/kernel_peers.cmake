# The kernel comparison harness (kernel_harness.cc) and its optional peers, shared by
# bench/bench_kernels and the `lowbit bench kernels` subcommand.
set(LOWBIT_KERNEL_HARNESS_SOURCES
  ${PROJECT_SOURCE_DIR}/bench/kernel_harness.cc
  ${PROJECT_SOURCE_DIR}/bench/limits_avx2.cc)
set_source_files_properties(${PROJECT_SOURCE_DIR}/bench/limits_avx2.cc PROPERTIES COMPILE_OPTIONS "${LOWBIT_FLAGS_AVX2}")
# OpenBLAS (and LOWBIT_HAVE_OPENBLAS) comes with lowbit::core where Debian's is installed
# (src/core/CMakeLists.txt).
# Debian's dnnl-config.cmake insists on OpenCL headers; the CPU engine needs only the library.
find_library(LOWBIT_DNNL_LIBRARY dnnl)
find_path(LOWBIT_DNNL_INCLUDE oneapi/dnnl/dnnl.hpp)
function(lowbit_kernel_harness target)
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/bench)
  target_link_libraries(${target} PRIVATE lowbit::kernels lowbit::quant lowbit::formats lowbit::core fmt::fmt)
  if(LOWBIT_DNNL_LIBRARY AND LOWBIT_DNNL_INCLUDE)
    target_include_directories(${target} SYSTEM PRIVATE ${LOWBIT_DNNL_INCLUDE})
    target_link_libraries(${target} PRIVATE ${LOWBIT_DNNL_LIBRARY})
    target_compile_definitions(${target} PRIVATE LOWBIT_HAVE_DNNL=1)
  endif()
endfunction()
