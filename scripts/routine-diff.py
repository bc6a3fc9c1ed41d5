#!/usr/bin/env python3
"""Lists the routines (functions and procedures) that differ between two
install scripts, as the statements an upgrade script needs for them:

    python3 scripts/routine-diff.py OLD.sql NEW.sql

For a routine new in NEW.sql: its CREATE statement and the REVOKE, GRANT and
COMMENT statements that follow it; for one whose definition changed: CREATE
OR REPLACE (or DROP and CREATE, when its result type changed, so that the
author notices); for one gone: DROP.  Everything else (tables, views, the
privileges' DO blocks) is the upgrade author's to write.  A helper for
writing sql/stripe_billing--A--B.sql by hand, not a generator of it: the
upgrade test compares the catalog an update makes with a fresh install's.
"""
import re
import sys


def statements(text):
    """Splits SQL into top-level statements (dollar quotes and comments aware)."""
    out, buf, i, n = [], [], 0, len(text)
    quote = None
    while i < n:
        if quote:
            j = text.find(quote, i)
            if j < 0:
                buf.append(text[i:])
                break
            buf.append(text[i:j + len(quote)])
            i = j + len(quote)
            quote = None
            continue
        c = text[i]
        if text.startswith('--', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
            continue
        if c == "'":
            j = i + 1
            while True:
                j = text.find("'", j)
                if j < 0 or not text.startswith("''", j):
                    break
                j += 2
            j = n if j < 0 else j + 1
            buf.append(text[i:j])
            i = j
            continue
        m = re.match(r'\$[A-Za-z_]*\$', text[i:])
        if m:
            quote = m.group(0)
            buf.append(quote)
            i += len(quote)
            continue
        if c == ';':
            buf.append(';')
            out.append(''.join(buf).strip())
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    if ''.join(buf).strip():
        out.append(''.join(buf).strip())
    return out


def strip_comments(stmt):
    """The statement without the comment lines before it (its body's kept)."""
    lines = stmt.split('\n')
    while lines and (not lines[0].strip() or lines[0].strip().startswith('--')):
        lines.pop(0)
    return '\n'.join(lines).strip()


ROUTINE = re.compile(r'CREATE (?:OR REPLACE )?(FUNCTION|PROCEDURE)\s+(stripe_billing\.\w+)\s*\(', re.S)


def arg_types(stmt, start):
    """The argument list's text (names and defaults included) after '('."""
    depth, i = 1, start
    while depth:
        if stmt[i] == '(':
            depth += 1
        elif stmt[i] == ')':
            depth -= 1
        i += 1
    return stmt[start:i - 1]


def signature(args):
    """Input argument types, for DROP (defaults, names and OUT args dropped)."""
    types = []
    depth, cur = 0, ''
    for ch in args + ',':
        if ch == ',' and depth == 0:
            a = re.sub(r'\s+DEFAULT\s+.*$', '', cur.strip(), flags=re.S | re.I)
            cur = ''
            if not a or a.upper().startswith('OUT '):
                continue
            a = re.sub(r'^(IN|INOUT|VARIADIC)\s+', '', a, flags=re.I)
            parts = a.split(None, 1)
            types.append(parts[1] if len(parts) == 2 and not parts[0].endswith('[]') else a)
            continue
        depth += ch in '([' and 1 or (ch in ')]' and -1 or 0)
        cur += ch
    return ', '.join(types)


def routines(path):
    stmts = statements(open(path).read())
    found = {}
    for k, s in enumerate(stmts):
        body = strip_comments(s)
        m = ROUTINE.match(body)
        if not m:
            continue
        args = arg_types(body, m.end())
        key = (m.group(2), signature(args))
        follow = []
        for t in stmts[k + 1:]:
            tb = strip_comments(t)
            if re.match(r'(REVOKE|GRANT|COMMENT ON) ', tb) and m.group(2) in tb:
                follow.append(tb)
            else:
                break
        ret = re.search(r'\)\s*(RETURNS\s+.*?)\s*(?:AS |LANGUAGE )', body[m.end():], re.S)
        found[key] = (m.group(1), body, follow, ret.group(1) if ret else '')
    return found


def main():
    old, new = routines(sys.argv[1]), routines(sys.argv[2])
    for key, (kind, body, follow, ret) in new.items():
        if key not in old:
            print(f'-- new: {key[0]}({key[1]})')
            print(body)
            for f in follow:
                print(f)
            print()
        elif old[key][1] != body:
            if old[key][3] != ret:
                print(f'-- result type changed: {key[0]}({key[1]})')
                print(f'DROP {kind} {key[0]}({key[1]});')
                print(body)
                for f in follow:
                    print(f)
            else:
                print(f'-- changed: {key[0]}({key[1]})')
                print(body.replace(f'CREATE {kind}', f'CREATE OR REPLACE {kind}', 1))
            print()
    for key, (kind, body, follow, ret) in old.items():
        if key not in new:
            print(f'-- gone: {key[0]}({key[1]})')
            print(f'DROP {kind} {key[0]}({key[1]});')
            print()


main()
