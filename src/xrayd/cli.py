"""``xrayd``: the command line, as the original daemon's (flags, config file, exit codes).

Exit codes: 2 for a bad flag; 1 for a fatal configuration or start-up error; 0 for -v, -h and
a clean shutdown.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from xrayd import __version__, config, flags, logs


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        given = flags.parse(args)
    except flags.HelpRequested:
        sys.stdout.write(flags.usage_text())
        return 0
    except flags.FlagError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.stdout.write(flags.usage_text())
        return 2

    early_log_file = given.get("log-file", "")
    try:
        cfg, _source = config.load(given.get("config"))
    except config.ConfigError as exc:
        logs.write_early_error(str(exc), early_log_file)
        return 1
    if given.get("version"):
        sys.stdout.write(f"AWS X-Ray daemon version: {__version__} (xrayd)\n")
        return 0
    cfg = cfg.replace(**flags.settings_from(given))

    level = logs.level_for(cfg.log_level)
    try:
        log_file = logs.configure(level if level is not None else logs.LEVELS_BY_SETTING["prod"],
                                  cfg.log_path, cfg.log_rotation)
    except OSError as exc:
        logs.write_early_error(f"Unable to open log file {cfg.log_path}: {exc.strerror}")
        return 1
    if level is None:
        logs.get_logger().warning(
            "Unknown log level %r (expected dev, debug, info, warn, error or prod): using prod",
            cfg.log_level,
        )

    from xrayd import daemon

    return daemon.run(cfg, log_file)
