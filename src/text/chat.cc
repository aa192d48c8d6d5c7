// ChatML rendering (include/lowbit/chat.h).
#include "lowbit/chat.h"

#include <fmt/format.h>

namespace lowbit {

std::string chatml_default_system(std::string_view tmpl) {
  const std::string open = std::string(kChatImStart) + "system";
  for (size_t at = tmpl.find(open); at != std::string_view::npos; at = tmpl.find(open, at + 1)) {
    size_t from = at + open.size();
    if (tmpl.substr(from, 1) == "\n") {
      from += 1;
    } else if (tmpl.substr(from, 2) == "\\n") {
      from += 2;
    } else {
      continue;
    }
    const size_t end = tmpl.find(kChatImEnd, from);
    if (end == std::string_view::npos) break;
    const std::string_view text = tmpl.substr(from, end - from);
    // A run that closes its string literal or opens Jinja syntax splices in a variable, not a default.
    if (text.find_first_of("'\"{}") != std::string_view::npos) continue;
    return std::string(text);
  }
  return "";
}

Result<std::string> chatml_prompt(std::string_view tmpl, std::string_view user, const std::optional<std::string>& system) {
  if (tmpl.find(kChatImStart) == std::string_view::npos || tmpl.find(kChatImEnd) == std::string_view::npos) {
    return InvalidArgument("chat template is not ChatML (<|im_start|>role\\n...<|im_end|>), the only form supported");
  }
  const std::string sys = system ? *system : chatml_default_system(tmpl);
  std::string out;
  if (!sys.empty()) out += fmt::format("{}system\n{}{}\n", kChatImStart, sys, kChatImEnd);
  out += fmt::format("{}user\n{}{}\n{}assistant\n", kChatImStart, user, kChatImEnd, kChatImStart);
  return out;
}

}  // namespace lowbit
