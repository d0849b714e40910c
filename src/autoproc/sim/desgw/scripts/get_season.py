"""Simulated Post-Processing `getSeason.py --ini FILE`: print [general] season."""

import argparse
import configparser
import sys


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ini", required=True)
    args = ap.parse_args(argv)
    config = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    if not config.read(args.ini):
        print(f"getSeason.py: cannot read {args.ini}", file=sys.stderr)
        return 1
    season = config.get("general", "season", fallback="").strip()
    if not season.isdigit():
        print(f"getSeason.py: {args.ini}: season {season!r} is not a number", file=sys.stderr)
        return 1
    print(season)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
