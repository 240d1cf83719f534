// Internal: an exception's message on one line, for errors that name a file or a rank: torch's
// backtrace dropped (c10::Error), trailing blanks cut, line breaks joined with "; ".
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace grpo::detail {

inline std::string one_line(const std::exception& e) {
  std::string text;
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    text = c10_error->what_without_backtrace();
  } else {
    text = e.what();
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::string out;
  for (char c : text) {
    if (c == '\n') {
      out += "; ";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace grpo::detail
