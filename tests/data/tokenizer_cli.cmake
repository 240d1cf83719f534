# `grpo tokenize` and `grpo detokenize` piped through each other (cmake -P):
#   -DGRPO=<grpo executable> -DTOKENIZER=<tokenizer.json> -DWORK_DIR=<scratch folder>
# Plain lines and --json lines (texts with newlines, tabs, quotes, special tokens) must come back
# unchanged; --skip-special-tokens drops <|im_start|> and <|im_end|>.
file(MAKE_DIRECTORY "${WORK_DIR}")
set(plain "Hello, world!\nÜnïcödé 😀 中文 and العربية\n<|im_start|>user<|im_end|>\n\ttabs   and  trailing spaces  \n\n")
set(jsonl [=["line one\nline two\n"
"<|im_start|>user\nWhat is 2+2? \"quoted\" \\ back\tslash<|im_end|>"
""
"👨‍👩‍👧‍👦 <think>\n\n</think>  "
]=])
file(WRITE "${WORK_DIR}/plain.txt" "${plain}")
file(WRITE "${WORK_DIR}/texts.jsonl" "${jsonl}")

function(run input output)
  execute_process(COMMAND "${GRPO}" ${ARGN} INPUT_FILE "${WORK_DIR}/${input}" OUTPUT_FILE "${WORK_DIR}/${output}"
                  ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "grpo ${ARGN} < ${input} failed (${rc}): ${err}")
  endif()
endfunction()
function(expect_same a b)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK_DIR}/${a}" "${WORK_DIR}/${b}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    file(READ "${WORK_DIR}/${a}" ta)
    file(READ "${WORK_DIR}/${b}" tb)
    message(FATAL_ERROR "${a} and ${b} differ:\n--- ${a}\n${ta}\n--- ${b}\n${tb}")
  endif()
endfunction()

run(plain.txt plain_ids.jsonl tokenize --tokenizer "${TOKENIZER}")
run(plain_ids.jsonl plain_back.txt detokenize --tokenizer "${TOKENIZER}")
expect_same(plain.txt plain_back.txt)

run(texts.jsonl ids.jsonl tokenize --tokenizer "${TOKENIZER}" --json)
run(ids.jsonl back.jsonl detokenize --tokenizer "${TOKENIZER}" --json)
expect_same(texts.jsonl back.jsonl)

file(READ "${WORK_DIR}/plain_ids.jsonl" ids)
string(REGEX MATCHALL "\n" newlines "${ids}")
list(LENGTH newlines n)
if(NOT n EQUAL 5)
  message(FATAL_ERROR "expected 5 lines of ids, found ${n}:\n${ids}")
endif()
run(plain_ids.jsonl skipped.txt detokenize --tokenizer "${TOKENIZER}" --skip-special-tokens)
string(REPLACE "<|im_start|>user<|im_end|>" "user" skipped "${plain}")
file(WRITE "${WORK_DIR}/skipped_expected.txt" "${skipped}")
expect_same(skipped_expected.txt skipped.txt)
message(STATUS "tokenize/detokenize round trips: ok")
