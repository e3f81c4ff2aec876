#!/usr/bin/env python3
"""Imports only point down (docs/ARCHITECTURE.md, "Layers"): for each crate's src given,
the module graph of its non-test code, drawn from `crate::` and `super::` paths and a
parent's use of its submodules. Prints the circles (strongly connected components of 2+
modules) and the children that use their parent's own items; exits 1 if there is any.
A reading of the text, not the compiler's: a path in a doc string counts too.

    python3 scripts/check_imports.py supervisor/src child/src shared/src
"""
import os
import re
import sys

TESTS = re.compile(r'^#\[cfg\((?:all\()?test[^\]]*\]\s*\nmod tests', re.M)


def modules(root):
    """Module path ('' for the crate root) -> file."""
    mods = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith('.rs'):
                continue
            rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'main', 'lib'):
                rel = rel[:-1]
            if rel and rel[-1] == 'tests':
                continue
            mods['::'.join(rel)] = os.path.join(d, f)
    return mods


def code(path):
    """The file without its test module and comment lines."""
    src = open(path, encoding='utf-8').read()
    m = TESTS.search(src)
    if m:
        src = src[:m.start()]
    return '\n'.join(l for l in src.splitlines() if not l.strip().startswith('//'))


def graph(mods):
    def resolve(path):
        parts = path.split('::')
        for n in range(len(parts), -1, -1):
            k = '::'.join(parts[:n])
            if k in mods:
                return k, parts[n:]
        return None, parts

    edges = {m: set() for m in mods}
    parent_items = set()
    for m, p in mods.items():
        src = code(p)
        here = m.split('::') if m else []
        parent = '::'.join(here[:-1])

        def note(base, path):
            full = path if base == 'crate' else '::'.join(here[:-1] + [path]).strip(':')
            tgt, items = resolve(full)
            if tgt is None or tgt == m:
                return
            edges[m].add(tgt)
            if base == 'super' and items and tgt == parent:
                parent_items.add((m, tgt, items[0]))

        for mt in re.finditer(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)', src):
            note(mt.group(1), mt.group(2)[2:])
        for mt in re.finditer(r'\buse (crate|super)::\{([^}]*)\}', src):
            for name in re.split(r'[,\s]+', mt.group(2)):
                name = name.split('::')[0].strip()
                if name and name != 'self':
                    note(mt.group(1), name)
        # A parent's own use of a submodule it declares (`mod x;` ... `x::f`).
        for sub in re.findall(r'^\s*(?:pub(?:\([a-z]+\))?\s+)?mod ([a-z_0-9]+);', src, re.M):
            k = '::'.join(here + [sub])
            if k in mods and re.search(r'\b' + sub + r'::', src):
                edges[m].add(k)
    return edges, sorted(parent_items)


def circles(edges):
    """Tarjan's strongly connected components of two or more modules."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def main(roots):
    bad = 0
    for root in roots:
        mods = modules(root)
        edges, parent_items = graph(mods)
        found = circles(edges)
        print(f'{root}: {len(mods)} modules, {sum(map(len, edges.values()))} imports, '
              f'{len(found)} circle(s), {len(parent_items)} use(s) of a parent\'s items')
        for comp in found:
            print('  circle:', ' '.join(x or '<root>' for x in comp))
        for a, b, item in parent_items:
            print(f'  {a} uses {b or "<root>"}::{item}')
        bad += len(found) + len(parent_items)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:] or ['supervisor/src', 'child/src', 'shared/src']))
