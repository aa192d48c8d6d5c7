// The `lowbit` command. Each subcommand lives in cmd_<name>.cc; this file wires them,
// applies the global knobs (--threads, LOWBIT_ISA, LOWBIT_THREADS) and maps errors to
// one line on stderr and a meaningful exit code.
#include <cstdio>

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
      ->check(CLI::PositiveNumber);
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "lowbit: %s (see --help)\n", e.what());
    return kExitUsage;
  } catch (const CliError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowbit: %s\n", e.message.c_str());
    return e.code;
  }
  return kExitOk;
}
