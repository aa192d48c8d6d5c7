// Sharded Hugging Face checkpoints: the index and its shards (sharded.h).
#include "lowbit/sharded.h"

#include <filesystem>
#include <set>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/file.h"

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

const SafetensorsFile* ShardedCheckpoint::file_of(std::string_view tensor) const {
  const auto it = where.find(tensor);
  return it == where.end() ? nullptr : &shards[it->second];
}

int64_t ShardedCheckpoint::bytes_with_prefix(std::string_view prefix) const {
  int64_t n = 0;
  for (auto it = where.lower_bound(prefix); it != where.end() && it->first.starts_with(prefix); ++it) {
    const SafetensorsTensorInfo* info = shards[it->second].find(it->first);
    if (info) n += static_cast<int64_t>(info->end - info->begin);
  }
  return n;
}

ShardedCheckpoint single_file_checkpoint(SafetensorsFile f) {
  ShardedCheckpoint ck;
  ck.index_path = f.path();
  for (const SafetensorsTensorInfo& t : f.tensors()) ck.where.emplace(t.name, 0);
  ck.shards.push_back(std::move(f));
  return ck;
}

Result<ShardedCheckpoint> open_sharded(const std::string& index_path) {
  LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss(index_path + ": not a JSON object");
  const auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object() || wm->empty()) {
    return DataLoss(index_path + ": no \"weight_map\" object naming each tensor's shard");
  }
  const fs::path dir = fs::path(index_path).parent_path();
  ShardedCheckpoint ck;
  ck.index_path = index_path;
  std::map<std::string, size_t> shard_pos;
  for (const auto& [tensor, v] : wm->items()) {
    if (!v.is_string()) return DataLoss(fmt::format("{}: weight_map entry for tensor {} is not a file name", index_path, tensor));
    const std::string shard = v.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos || shard == "." || shard == "..") {
      return DataLoss(fmt::format("{}: tensor {} names shard '{}', not a file name in the index's folder", index_path, tensor, shard));
    }
    auto it = shard_pos.find(shard);
    if (it == shard_pos.end()) {
      const std::string path = (dir / shard).string();
      std::error_code ec;
      if (!fs::exists(path, ec)) {
        return NotFound(fmt::format("{}: shard is missing ({} names it for tensor {})", path, kShardIndexName, tensor));
      }
      LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors(path));
      it = shard_pos.emplace(shard, ck.shards.size()).first;
      ck.shards.push_back(std::move(f));
    }
    const SafetensorsFile& f = ck.shards[it->second];
    if (f.find(tensor) == nullptr) {
      return DataLoss(fmt::format("{}: tensor {} is not in this shard ({} puts it here)", f.path(), tensor, kShardIndexName));
    }
    ck.where.emplace(tensor, it->second);
  }
  for (size_t s = 0; s < ck.shards.size(); ++s) {
    for (const SafetensorsTensorInfo& t : ck.shards[s].tensors()) {
      const auto w = ck.where.find(t.name);
      if (w == ck.where.end() || w->second != s) {
        return DataLoss(fmt::format("{}: tensor {} is not in {} for this shard", ck.shards[s].path(), t.name, kShardIndexName));
      }
    }
  }
  return ck;
}

}  // namespace lowbit
