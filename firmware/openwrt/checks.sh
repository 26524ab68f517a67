# shellcheck shell=bash
# The check helpers of the OpenWrt package tests (test-*.sh source this file): each `check`
# counts a pass or prints FAIL with what failed; `checks_summary NAME` prints the counts and
# returns non-zero when anything failed.

passed=0
failed=0

# check WHAT CMD...: CMD succeeding is a pass.
check() {
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        printf 'FAIL: %s\n' "$what" >&2
    fi
}

# same GOT EXPECTED
same() { [[ "$1" == "$2" ]] || { printf '  expected: %q\n  got:      %q\n' "$2" "$1" >&2 && false; }; }
# has_line FILE LINE (whole line, fixed string)
has_line() { grep -qxF -- "$2" "$1" || { printf '  %s lacks line %q\n' "$1" "$2" >&2 && false; }; }
# has_text FILE TEXT (fixed string)
has_text() { grep -qF -- "$2" "$1" || { printf '  %s lacks %q\n' "$1" "$2" >&2 && false; }; }
# has FILE REGEX / lacks FILE REGEX (extended regular expressions)
has() { grep -qE -- "$2" "$1" || { printf '  %s lacks /%s/\n' "$1" "$2" >&2 && false; }; }
lacks() { ! grep -nE -- "$2" "$1" >&2 || { printf '  %s has /%s/\n' "$1" "$2" >&2 && false; }; }

# checks_summary NAME: "NAME: N passed, M failed"; fails when any check failed.
checks_summary() {
    printf '%s: %d passed, %d failed\n' "$1" "$passed" "$failed"
    [[ "$failed" == 0 ]]
}
