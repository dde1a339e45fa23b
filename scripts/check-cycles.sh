#!/usr/bin/env bash
# Fails when the library's modules import each other in a cycle.
#
# Every file under src/ (the CLI in src/bin/ and the crate root lib.rs aside) is one module:
# src/a/b.rs and src/a/b/mod.rs are `a::b`. An edge A -> B is a path in A's code that
# names something in B: `crate::...`, `super::...`, `self::...` (grouped imports
# `use crate::{a::X, b::{c::Y}}` expanded) and paths that start at one of A's own child
# modules (`llama::LayerActs`). The target is the longest prefix of the path that is a
# module. Not edges:
# - a module's use of its own ancestors (`super::Model` in model/llama.rs): the files of a
#   module are its parts, and a part may use what the module's mod.rs defines;
# - `pub use` of a module's own descendants: a parent re-exporting its children's items
#   is the module's face, not a dependency of its code;
# - `#[cfg(test)]` blocks (test modules stand at the end of a file; everything from the
#   attribute on is skipped), comments, and external crates.
#
# Prints every edge, then every cycle found (as `a -> b -> a`), and exits 1 if there is one.
# Usage: scripts/check-cycles.sh [--quiet]   (--quiet: only the cycles)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/src"
quiet=0
[[ "${1:-}" == "--quiet" ]] && quiet=1

# module path of every file, one "path<TAB>module" line
files=$(find . -name '*.rs' -not -path './bin/*' -not -path './lib.rs' | sed 's|^\./||' | sort)
mods=$(for f in $files; do
    m=${f%.rs}
    m=${m%/mod}
    printf '%s\t%s\n' "$f" "${m//\//::}"
done)

edges=$(for f in $files; do
    m=$(printf '%s\n' "$mods" | awk -F'\t' -v f="$f" '$1 == f { print $2 }')
    awk -v self="$m" -v file="$f" -v modlist="$(printf '%s\n' "$mods" | cut -f2 | tr '\n' ' ')" '
    function is_mod(p) { return (p in MOD) }
    # the longest module prefix of an absolute path "a::b::c"
    function module_of(p,   n, segs, i, best, cur) {
        n = split(p, segs, "::"); best = ""; cur = ""
        for (i = 1; i <= n; i++) {
            cur = (i == 1) ? segs[i] : cur "::" segs[i]
            if (is_mod(cur)) best = cur
        }
        return best
    }
    function is_descendant(a, b) { return index(a, b "::") == 1 }
    function emit(p, pub,   t) {
        t = module_of(p)
        if (t == "" || t == self || is_descendant(self, t)) return
        if (pub && is_descendant(t, self)) return
        E[self " " t] = 1
    }
    function skipws(   c) {
        while (pos <= len) { c = substr(s, pos, 1); if (c ~ /[ \t\n\r]/) pos++; else break }
    }
    # parses the path tree at pos below the absolute prefix; emits every full path
    function tree(prefix, pub,   id, np, c) {
        skipws()
        if (substr(s, pos, 1) == "{") {
            pos++
            while (pos <= len) {
                skipws()
                c = substr(s, pos, 1)
                if (c == "}") { pos++; return }
                if (c == ",") { pos++; continue }
                tree(prefix, pub)
            }
            return
        }
        if (!match(substr(s, pos), /^[A-Za-z_][A-Za-z0-9_]*|^\*/)) { emit(prefix, pub); return }
        id = substr(s, pos, RLENGTH); pos += RLENGTH
        np = (id == "self" || id == "*") ? prefix : (prefix == "" ? id : prefix "::" id)
        skipws()
        if (substr(s, pos, 2) == "::") { pos += 2; tree(np, pub); return }
        # `as alias`
        emit(np, pub)
    }
    BEGIN { n = split(modlist, L, " "); for (i = 1; i <= n; i++) if (L[i] != "") MOD[L[i]] = 1 }
    /^[ \t]*#\[cfg\(test\)\]/ { stop = 1 }
    stop { next }
    { line = $0; sub(/\/\/.*/, "", line); s = s line "\n" }
    END {
        len = length(s)
        # the base module `super` starts from: the file is `self`; in a mod.rs or a
        # plain file alike, `super` is self minus its last segment
        nparts = split(self, parts, "::")
        pos = 1
        while (pos <= len) {
            rest = substr(s, pos)
            if (!match(rest, /[A-Za-z_][A-Za-z0-9_]*[ \t]*::/)) break
            start = pos + RSTART - 1
            prev = (start > 1) ? substr(s, start - 1, 1) : " "
            # only the first segment of a path (not `a::b` inside `x::a::b`, not `x.a`)
            if (prev ~ /[A-Za-z0-9_:]/) { pos = start + RLENGTH; continue }
            match(substr(s, start), /^[A-Za-z_][A-Za-z0-9_]*/)
            id = substr(s, start, RLENGTH)
            # a `pub use` / `pub(crate) use` statement?
            head = substr(s, 1, start - 1)
            sub(/.*[;{}]/, "", head)
            pub = (head ~ /pub(\([a-z ]+\))?[ \t\n]+use[ \t\n]*$/)
            pos = start
            if (id == "crate") {
                pos += length(id); skipws(); pos += 2; tree("", pub)
            } else if (id == "super" || id == "self") {
                k = nparts
                while (1) {
                    match(substr(s, pos), /^[A-Za-z_]+[ \t]*::[ \t]*/)
                    w = substr(s, pos, RLENGTH); sub(/[ \t]*::.*/, "", w)
                    if (w == "super") { k--; pos += RLENGTH }
                    else if (w == "self") { pos += RLENGTH }
                    else break
                }
                base = ""
                for (i = 1; i <= k; i++) base = (i == 1) ? parts[i] : base "::" parts[i]
                tree(base, pub)
            } else if (is_mod(self "::" id)) {
                tree(self, pub)
            } else {
                pos = start + length(id)
            }
        }
        for (e in E) print e
    }' "$f"
done | sort -u)

if [[ $quiet == 0 ]]; then
    echo "module edges (A imports from B):"
    printf '%s\n' "$edges" | sed 's/ / -> /; s/^/  /'
fi

# cycles: a depth-first search that reports each back edge with the path that closes it
cycles=$(printf '%s\n' "$edges" | awk '
    { if ($1 != "") { adj[$1] = adj[$1] " " $2; node[$1] = 1; node[$2] = 1 } }
    function dfs(u,   i, n, nb, v, j, c) {
        state[u] = 1; stack[++depth] = u
        n = split(adj[u], nb, " ")
        for (i = 1; i <= n; i++) {
            v = nb[i]
            if (state[v] == 1) {
                c = ""
                for (j = depth; j >= 1; j--) { c = stack[j] " -> " c; if (stack[j] == v) break }
                print c v
            } else if (state[v] == 0) dfs(v)
        }
        depth--; state[u] = 2
    }
    END { depth = 0; for (u in node) state[u] = 0; for (u in node) if (state[u] == 0) dfs(u) }' | sort)

if [[ -n "$cycles" ]]; then
    echo "import cycles:"
    printf '%s\n' "$cycles" | sed 's/^/  /'
    exit 1
fi
echo "no import cycle between modules"
