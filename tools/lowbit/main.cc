// The `lowbit` command. Each subcommand lives in cmd_<name>.cc; this file wires them,
// applies the global knobs (--threads, LOWBIT_ISA, LOWBIT_THREADS) and maps errors to
// one line on stderr and a meaningful exit code.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli.h"
#include "lowbit/cpu.h"
#include "lowbit/parallel.h"

int main(int argc, char** argv) {
  using namespace lowbit;
  using namespace lowbit::cli;

  CLI::App app{"lowbit: quantize LLMs, make them fast, and measure what it costs", "lowbit"};
  app.set_version_flag("--version", std::string("lowbit ") + LOWBIT_VERSION);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "Worker threads (default: LOWBIT_THREADS or all cores)")
      ->check(CLI::Range(1, 1024));
  // Global knobs are applied before any subcommand runs.
  app.parse_complete_callback([&threads] {
    if (Status s = init_isa_from_env(); !s.ok()) fail(kExitUsage, s.message());
    if (Status s = init_threads_from_env(); !s.ok()) fail(kExitUsage, s.message());
    if (threads > 0) {
      if (Status s = set_num_threads(threads); !s.ok()) fail(kExitUsage, s.message());
    }
  });
  register_formats(app);
  register_cpu(app);
  register_schemes(app);
  register_generate(app);
  register_eval(app);
  register_quantize(app);
  register_sensitivity(app);
  register_dynamic(app);
  register_convert(app);
  register_kernels(app);
  register_bench(app);
  register_train(app);
  register_qat(app);

  // `formats encode` takes raw values (see cmd_formats.cc); CLI11 would treat a "--" that
  // follows FORMAT as the end of the subcommand, so hand it over as a marker instead.
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "formats" && args[i + 1] == "encode") {
      for (size_t j = i + 2; j < args.size(); ++j) {
        if (args[j] == "--") args[j] = kEndOfFlagsMarker;
      }
      break;
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the reversed vector form

  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "lowbit: %s (see --help)\n", escape_control(e.what()).c_str());
    return kExitUsage;
  } catch (const CliError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowbit: %s\n", escape_control(e.message).c_str());
    return e.code;
  }
  return kExitOk;
}
