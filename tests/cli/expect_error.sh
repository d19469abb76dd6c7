# shellcheck shell=bash disable=SC2034  # sourced; `failed` belongs to the sourcing script
# Shared by the tests/cli scripts (source it): one bad command line, checked the way a user sees it.
# expect_error_from RC WANT CMD...: CMD must exit by itself with status RC ("any": 1-127, not a
# signal), print exactly one line on stderr containing WANT, and nothing on stdout. Prints "ok: ..."
# or "FAIL: ..." with the stderr; sets failed=1 on a failure.
expect_error_from() {
  local want_rc=$1 want=$2 out err rc lines
  shift 2
  out=$(mktemp) err=$(mktemp)
  "$@" > "$out" 2> "$err"
  rc=$?
  lines=$(grep -c . "$err")
  if { [[ $want_rc == any ]] && ((rc == 0 || rc > 127)); } ||
      { [[ $want_rc != any ]] && ((rc != want_rc)); } ||
      [[ $lines != 1 ]] || [[ -s $out ]] || ! grep -qF -- "$want" "$err"; then
    echo "FAIL: $* -> exit $rc, $lines stderr lines, stdout $(wc -c < "$out") bytes:"
    sed 's/^/    /' "$err" | head -5
    failed=1
  else
    echo "ok: $want -> $(cat "$err")"
  fi
  rm -f "$out" "$err"
}
