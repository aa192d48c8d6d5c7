// ChatML chat templates (the tokenizer.chat_template of SmolLM2, Qwen2 and most instruct GGUFs):
// one user turn rendered as Hugging Face's apply_chat_template(add_generation_prompt=True) does,
// with the template's default system message when the caller gives none. Only the ChatML shape is
// understood (no Jinja interpreter): a template without <|im_start|> / <|im_end|> is refused.
//
//   LOWBIT_ASSIGN_OR_RETURN(std::string text, chatml_prompt(tmpl, "Write a quicksort in C", std::nullopt));
//   // "<|im_start|>system\nYou are Qwen, ...<|im_end|>\n<|im_start|>user\nWrite ...<|im_end|>\n<|im_start|>assistant\n"
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "lowbit/status.h"

namespace lowbit {

inline constexpr std::string_view kChatImStart = "<|im_start|>";
inline constexpr std::string_view kChatImEnd = "<|im_end|>";

// The system message the template writes when the first message is not a system one: the literal
// text of a "<|im_start|>system\n...<|im_end|>" run in the template ("\n" written as a newline or
// as Jinja's escape), skipping runs that splice in variables; "" when there is none.
std::string chatml_default_system(std::string_view tmpl);

// One user turn and the assistant's opening. `system`: the system turn's text (nullopt: the
// template's default; an empty string: no system turn). InvalidArgument if `tmpl` is not ChatML.
Result<std::string> chatml_prompt(std::string_view tmpl, std::string_view user, const std::optional<std::string>& system);

}  // namespace lowbit
