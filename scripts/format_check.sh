#!/usr/bin/env bash
# Checks the tracked C++/CUDA sources against .clang-format (clang-format 14).
#   scripts/format_check.sh         list the files that are not formatted; exit 1 if any
#   scripts/format_check.sh --fix   format them in place
set -euo pipefail

fix=0
case "${1:-}" in
  "") ;;
  --fix) fix=1 ;;
  -h | --help) sed -n '2,4s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "usage: scripts/format_check.sh [--fix]" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f .clang-format ] || { echo "format_check: no .clang-format in $(pwd)" >&2; exit 2; }

major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p' | head -n 1; }
fmt=""
for c in clang-format-14 clang-format; do
  if command -v "$c" >/dev/null 2>&1 && [ "$(major "$c")" = 14 ]; then fmt=$(command -v "$c"); break; fi
done
if [ -z "$fmt" ]; then
  echo "format_check: clang-format 14 is missing (install it: apt-get install clang-format-14)" >&2
  exit 1
fi

files=()
while IFS= read -r -d '' f; do [ -f "$f" ] && files+=("$f"); done \
  < <(git ls-files -z -- '*.h' '*.cpp' '*.cu' '*.cuh')
if [ "${#files[@]}" -eq 0 ]; then echo "format_check: no C++/CUDA files"; exit 0; fi

if [ "$fix" = 1 ]; then
  "$fmt" -i --style=file "${files[@]}"
  echo "format_check: formatted ${#files[@]} files"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  if ! out=$("$fmt" --dry-run -Werror --style=file "$f" 2>&1); then
    # Anything but a formatting violation (a bad .clang-format, an unreadable file) is an error.
    grep -q 'Wclang-format-violations' <<<"$out" || { echo "$out" >&2; exit 2; }
    bad+=("$f")
  fi
done
if [ "${#bad[@]}" -gt 0 ]; then
  echo "format_check: ${#bad[@]} of ${#files[@]} files are not formatted:"
  printf '  %s\n' "${bad[@]}"
  echo "run: scripts/format_check.sh --fix"
  exit 1
fi
echo "format_check: ${#files[@]} files formatted"
