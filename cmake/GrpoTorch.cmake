# Finds LibTorch (the one inside the torch Python wheel) and decides whether CUDA kernels build.
#
# Inputs:  GRPO_PYTHON  python whose `import torch` provides LibTorch (scripts/setup.sh sets it);
#                       ignored when Torch_DIR or CMAKE_PREFIX_PATH already finds Torch.
#          GRPO_WITH_CUDA  AUTO | ON | OFF
# Outputs: target torch, Torch_DIR, Torch_VERSION, GRPO_TORCH_LIB_DIR, GRPO_WITH_CUDA_KERNELS (0|1)

set(GRPO_PYTHON "" CACHE FILEPATH "Python interpreter whose torch package provides LibTorch")

if(NOT Torch_DIR AND GRPO_PYTHON)
  execute_process(
    COMMAND "${GRPO_PYTHON}" -c "import torch; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _grpo_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _grpo_torch_rc ERROR_VARIABLE _grpo_torch_err)
  if(NOT _grpo_torch_rc EQUAL 0)
    message(FATAL_ERROR "GRPO_PYTHON=${GRPO_PYTHON} cannot import torch: ${_grpo_torch_err}\n"
                        "Run scripts/setup.sh, which installs torch into a cached venv.")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_grpo_torch_prefix}")
endif()

# CUDA 13 dropped nvToolsExt; older torch configs still ask for CUDA::nvToolsExt.
find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND AND NOT TARGET CUDA::nvToolsExt AND TARGET CUDA::nvtx3)
  add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
  target_link_libraries(CUDA::nvToolsExt INTERFACE CUDA::nvtx3)
endif()

# Torch's config adds -gencode flags for every architecture in TORCH_CUDA_ARCH_LIST (eleven by
# default) to CMAKE_CUDA_FLAGS; our kernels target GRPO_CUDA_ARCHITECTURES only.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "9.0a")
endif()
find_package(Torch REQUIRED CONFIG)
set(Torch_VERSION "${Torch_VERSION}")
get_filename_component(GRPO_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
message(STATUS "grpo: LibTorch ${Torch_VERSION} from ${Torch_DIR}")

set(_grpo_torch_has_cuda OFF)
if(TARGET torch_cuda)
  set(_grpo_torch_has_cuda ON)
endif()

set(GRPO_WITH_CUDA_KERNELS 0)
if(GRPO_WITH_CUDA STREQUAL "ON" OR GRPO_WITH_CUDA STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER AND _grpo_torch_has_cuda)
    set(GRPO_WITH_CUDA_KERNELS 1)
  elseif(GRPO_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GRPO_WITH_CUDA=ON but nvcc (found: '${CMAKE_CUDA_COMPILER}') or a CUDA "
                        "build of torch (torch_cuda: ${_grpo_torch_has_cuda}) is missing")
  endif()
elseif(NOT GRPO_WITH_CUDA STREQUAL "OFF")
  message(FATAL_ERROR "GRPO_WITH_CUDA must be AUTO, ON or OFF, got '${GRPO_WITH_CUDA}'")
endif()
if(GRPO_WITH_CUDA_KERNELS)
  enable_language(CUDA)
  set(GRPO_WITH_CUDA_KERNELS_TEXT "yes")
else()
  set(GRPO_WITH_CUDA_KERNELS_TEXT "no")
endif()
message(STATUS "grpo: CUDA kernels ${GRPO_WITH_CUDA_KERNELS_TEXT} (GRPO_WITH_CUDA=${GRPO_WITH_CUDA})")
