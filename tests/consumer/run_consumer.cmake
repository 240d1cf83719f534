# ctest driver: install grpo from GRPO_BUILD_DIR into WORK_DIR/prefix, then configure, build and
# run tests/consumer against that prefix with find_package(grpo).
foreach(var GRPO_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR TORCH_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer: ${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run_step("install" "${CMAKE_COMMAND}" --install "${GRPO_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
set(launcher "")
find_program(CCACHE ccache)
if(CCACHE)
  set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE}")
endif()
run_step("configure" "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
         -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release ${launcher}
         "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" "-DTorch_DIR=${TORCH_DIR}")
run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run_step("run" "${WORK_DIR}/build/consumer")
message(STATUS "${step_output}")
if(NOT step_output MATCHES "consumer ok: sum 14")
  message(FATAL_ERROR "consumer: unexpected output:\n${step_output}")
endif()
