"""Byte-level text diff, behaving like the diff-match-patch variant that Fleece uses.

Fleece (and so LiteCore) computes string deltas with the STL port of Google's diff-match-patch,
instantiated on ``std::string``: the diff runs on UTF-8 *bytes*. To produce the same deltas as a
phone does, this module follows the same steps: trim the common prefix/suffix, the "shorter text
inside the longer" and single-byte shortcuts, the half-match split (only when a time limit is
set), a line-level pre-pass for texts over 100 bytes, Myers' bisection, then merge, semantic and
efficiency clean-ups (edit cost 4). The result is a list of ``(op, text)`` pairs whose EQUAL and
DELETE parts concatenate to the old text and EQUAL and INSERT parts to the new one.

Line mode encodes each distinct line as one ``str`` code point, so the same routines run on
``bytes`` (real text) and on ``str`` (line ids); the semantic clean-up only ever sees bytes.
"""

from __future__ import annotations

import time
from typing import TypeVar

__all__ = ["DELETE", "EQUAL", "INSERT", "Diff", "diff_texts"]

DELETE = -1
EQUAL = 0
INSERT = 1

#: One diff operation: ``[op, text]`` (a list, so clean-ups can edit it in place).
Diff = list

_T = TypeVar("_T", bytes, str)

_EDIT_COST = 4  # Diff_EditCost
_LINE_MODE_MIN = 100  # both texts longer than this -> line-level pre-pass

_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SPACE = frozenset(b" \t\n\v\f\r")


def diff_texts(old: bytes, new: bytes, timeout: float | None = None) -> list[Diff]:
    """Diff two byte strings the way Fleece's ``patch_make`` does.

    ``timeout`` (seconds) bounds the search; ``None`` means no limit, which also disables the
    half-match shortcut (exactly as a non-positive ``Diff_Timeout`` does in diff-match-patch).
    """
    deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
    diffs = _diff_main(old, new, True, deadline)
    if len(diffs) > 2:
        _cleanup_semantic(diffs)
        _cleanup_efficiency(diffs)
    return diffs


# ---------------------------------------------------------------------------------------------
# Core diff


def _diff_main(t1: _T, t2: _T, checklines: bool, deadline: float | None) -> list[Diff]:
    if t1 == t2:
        return [[EQUAL, t1]] if t1 else []
    n = _common_prefix(t1, t2)
    prefix, t1, t2 = t1[:n], t1[n:], t2[n:]
    n = _common_suffix(t1, t2)
    suffix = t1[len(t1) - n :]
    t1, t2 = t1[: len(t1) - n], t2[: len(t2) - n]

    diffs = _diff_compute(t1, t2, checklines, deadline)
    if prefix:
        diffs.insert(0, [EQUAL, prefix])
    if suffix:
        diffs.append([EQUAL, suffix])
    _cleanup_merge(diffs)
    return diffs


def _diff_compute(t1: _T, t2: _T, checklines: bool, deadline: float | None) -> list[Diff]:
    if not t1:
        return [[INSERT, t2]]
    if not t2:
        return [[DELETE, t1]]

    longer, shorter = (t1, t2) if len(t1) > len(t2) else (t2, t1)
    i = longer.find(shorter)
    if i != -1:
        op = DELETE if len(t1) > len(t2) else INSERT
        return [[op, longer[:i]], [EQUAL, shorter], [op, longer[i + len(shorter) :]]]
    if len(shorter) == 1:
        return [[DELETE, t1], [INSERT, t2]]

    if deadline is not None:
        hm = _half_match(t1, t2)
        if hm is not None:
            t1a, t1b, t2a, t2b, common = hm
            diffs = _diff_main(t1a, t2a, checklines, deadline)
            diffs.append([EQUAL, common])
            diffs.extend(_diff_main(t1b, t2b, checklines, deadline))
            return diffs

    if checklines and len(t1) > _LINE_MODE_MIN and len(t2) > _LINE_MODE_MIN:
        return _line_mode(t1, t2, deadline)  # type: ignore[arg-type]
    return _bisect(t1, t2, deadline)


def _line_mode(t1: bytes, t2: bytes, deadline: float | None) -> list[Diff]:
    """Diff line by line first, then re-diff each replaced block byte by byte."""
    lines: list[bytes] = [b""]
    index: dict[bytes, int] = {}

    def encode(text: bytes) -> str:
        ids = []
        start = 0
        while start < len(text):
            end = text.find(b"\n", start)
            end = len(text) if end == -1 else end + 1
            line = text[start:end]
            n = index.get(line)
            if n is None:
                n = index[line] = len(lines)
                lines.append(line)
            ids.append(chr(n))
            start = end
        return "".join(ids)

    c1, c2 = encode(t1), encode(t2)
    line_diffs = _diff_main(c1, c2, False, deadline)
    diffs: list[Diff] = [[op, b"".join(lines[ord(c)] for c in text)] for op, text in line_diffs]
    _cleanup_semantic(diffs)

    diffs.append([EQUAL, b""])
    count_del = count_ins = 0
    text_del = text_ins = b""
    i = 0
    while i < len(diffs):
        op = diffs[i][0]
        if op == INSERT:
            count_ins += 1
            text_ins += diffs[i][1]
        elif op == DELETE:
            count_del += 1
            text_del += diffs[i][1]
        else:
            if count_del >= 1 and count_ins >= 1:
                start = i - count_del - count_ins
                sub = _diff_main(text_del, text_ins, False, deadline)
                diffs[start:i] = sub
                i = start + len(sub)
            count_del = count_ins = 0
            text_del = text_ins = b""
        i += 1
    diffs.pop()
    return diffs


def _bisect(t1: _T, t2: _T, deadline: float | None) -> list[Diff]:
    """Find the middle snake (Myers 1986) and split the problem there."""
    len1, len2 = len(t1), len(t2)
    max_d = (len1 + len2 + 1) // 2
    v_offset = max_d
    v_length = 2 * max_d
    v1 = [-1] * v_length
    v2 = [-1] * v_length
    v1[v_offset + 1] = 0
    v2[v_offset + 1] = 0
    delta = len1 - len2
    front = delta % 2 != 0
    k1start = k1end = k2start = k2end = 0
    for d in range(max_d):
        if deadline is not None and time.monotonic() > deadline:
            break
        k1 = -d + k1start
        while k1 <= d - k1end:  # the bound moves while walking, as in the original
            k1_offset = v_offset + k1
            if k1 == -d or (k1 != d and v1[k1_offset - 1] < v1[k1_offset + 1]):
                x1 = v1[k1_offset + 1]
            else:
                x1 = v1[k1_offset - 1] + 1
            y1 = x1 - k1
            while x1 < len1 and y1 < len2 and t1[x1] == t2[y1]:
                x1 += 1
                y1 += 1
            v1[k1_offset] = x1
            if x1 > len1:
                k1end += 2
            elif y1 > len2:
                k1start += 2
            elif front:
                k2_offset = v_offset + delta - k1
                if 0 <= k2_offset < v_length and v2[k2_offset] != -1:
                    x2 = len1 - v2[k2_offset]
                    if x1 >= x2:
                        return _bisect_split(t1, t2, x1, y1, deadline)
            k1 += 2
        k2 = -d + k2start
        while k2 <= d - k2end:
            k2_offset = v_offset + k2
            if k2 == -d or (k2 != d and v2[k2_offset - 1] < v2[k2_offset + 1]):
                x2 = v2[k2_offset + 1]
            else:
                x2 = v2[k2_offset - 1] + 1
            y2 = x2 - k2
            while x2 < len1 and y2 < len2 and t1[len1 - x2 - 1] == t2[len2 - y2 - 1]:
                x2 += 1
                y2 += 1
            v2[k2_offset] = x2
            if x2 > len1:
                k2end += 2
            elif y2 > len2:
                k2start += 2
            elif not front:
                k1_offset = v_offset + delta - k2
                if 0 <= k1_offset < v_length and v1[k1_offset] != -1:
                    x1 = v1[k1_offset]
                    y1 = v_offset + x1 - k1_offset
                    if x1 >= len1 - x2:
                        return _bisect_split(t1, t2, x1, y1, deadline)
            k2 += 2
    # Out of time, or nothing in common at all.
    return [[DELETE, t1], [INSERT, t2]]


def _bisect_split(t1: _T, t2: _T, x: int, y: int, deadline: float | None) -> list[Diff]:
    diffs = _diff_main(t1[:x], t2[:y], False, deadline)
    diffs.extend(_diff_main(t1[x:], t2[y:], False, deadline))
    return diffs


def _half_match(t1: _T, t2: _T) -> tuple[_T, _T, _T, _T, _T] | None:
    """Split on a common substring at least half as long as the longer text, if there is one."""
    longer, shorter = (t1, t2) if len(t1) > len(t2) else (t2, t1)
    if len(longer) < 4 or len(shorter) * 2 < len(longer):
        return None
    hm1 = _half_match_at(longer, shorter, (len(longer) + 3) // 4)
    hm2 = _half_match_at(longer, shorter, (len(longer) + 1) // 2)
    if hm1 is None and hm2 is None:
        return None
    if hm2 is None:
        hm = hm1
    elif hm1 is None:
        hm = hm2
    else:
        hm = hm1 if len(hm1[4]) > len(hm2[4]) else hm2
    assert hm is not None
    long_a, long_b, short_a, short_b, common = hm
    if len(t1) > len(t2):
        return long_a, long_b, short_a, short_b, common
    return short_a, short_b, long_a, long_b, common


def _half_match_at(longer: _T, shorter: _T, i: int) -> tuple[_T, _T, _T, _T, _T] | None:
    seed = longer[i : i + len(longer) // 4]
    best: tuple[_T, _T, _T, _T, _T] | None = None
    best_len = 0
    j = shorter.find(seed)
    while j != -1:
        prefix_len = _common_prefix(longer[i:], shorter[j:])
        suffix_len = _common_suffix(longer[:i], shorter[:j])
        if best_len < suffix_len + prefix_len:
            best_len = suffix_len + prefix_len
            best = (
                longer[: i - suffix_len],
                longer[i + prefix_len :],
                shorter[: j - suffix_len],
                shorter[j + prefix_len :],
                shorter[j - suffix_len : j + prefix_len],
            )
        j = shorter.find(seed, j + 1)
    if best is not None and best_len * 2 >= len(longer):
        return best
    return None


def _common_prefix(a: _T, b: _T) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _common_suffix(a: _T, b: _T) -> int:
    la, lb = len(a), len(b)
    n = min(la, lb)
    if a[la - n :] == b[lb - n :]:
        return n
    lo, hi = 0, n  # common suffix length is >= lo and < hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[la - mid : la - lo] == b[lb - mid : lb - lo]:
            lo = mid
        else:
            hi = mid
    return lo


def _common_overlap(a: bytes, b: bytes) -> int:
    """Length of the longest suffix of ``a`` that is a prefix of ``b``."""
    la, lb = len(a), len(b)
    if not la or not lb:
        return 0
    if la > lb:
        a = a[la - lb :]
    elif la < lb:
        b = b[:la]
    n = min(la, lb)
    if a == b:
        return n
    best = 0
    length = 1
    while True:
        found = b.find(a[n - length :])
        if found == -1:
            return best
        length += found
        if found == 0 or a[n - length :] == b[:length]:
            best = length
            length += 1


# ---------------------------------------------------------------------------------------------
# Clean-ups


def _cleanup_merge(diffs: list[Diff]) -> None:
    """Merge adjacent edits and equalities; factor common affixes out of edit runs."""
    empty = diffs[0][1][:0] if diffs else b""
    diffs.append([EQUAL, empty])
    count_del = count_ins = 0
    text_del = text_ins = empty
    prev_equal: int | None = None
    i = 0
    while i < len(diffs):
        op, text = diffs[i]
        if op == INSERT:
            count_ins += 1
            text_ins += text
            prev_equal = None
        elif op == DELETE:
            count_del += 1
            text_del += text
            prev_equal = None
        else:
            if count_del + count_ins > 1:
                start = i - count_del - count_ins
                del diffs[start:i]
                i = start
                if count_del and count_ins:
                    n = _common_prefix(text_ins, text_del)
                    if n:
                        if i > 0:
                            diffs[i - 1][1] += text_ins[:n]
                        else:
                            diffs.insert(0, [EQUAL, text_ins[:n]])
                            i += 1
                        text_ins, text_del = text_ins[n:], text_del[n:]
                    n = _common_suffix(text_ins, text_del)
                    if n:
                        diffs[i][1] = text_ins[len(text_ins) - n :] + diffs[i][1]
                        text_ins = text_ins[: len(text_ins) - n]
                        text_del = text_del[: len(text_del) - n]
                if text_del:
                    diffs.insert(i, [DELETE, text_del])
                    i += 1
                if text_ins:
                    diffs.insert(i, [INSERT, text_ins])
                    i += 1
            elif prev_equal is not None:
                diffs[prev_equal][1] += diffs[i][1]
                del diffs[i]
                i -= 1
            count_del = count_ins = 0
            text_del = text_ins = empty
            prev_equal = i
        i += 1
    if not diffs[-1][1]:
        diffs.pop()

    # Second pass: slide single edits between equalities sideways to remove an equality,
    # e.g. A<ins>BA</ins>C -> <ins>AB</ins>AC.
    changes = False
    i = 1
    while i < len(diffs) - 1:
        prev, cur, nxt = diffs[i - 1], diffs[i], diffs[i + 1]
        if prev[0] == EQUAL and nxt[0] == EQUAL:
            if cur[1].endswith(prev[1]):
                cur[1] = prev[1] + cur[1][: len(cur[1]) - len(prev[1])]
                nxt[1] = prev[1] + nxt[1]
                del diffs[i - 1]
                changes = True
            elif cur[1].startswith(nxt[1]):
                prev[1] += nxt[1]
                cur[1] = cur[1][len(nxt[1]) :] + nxt[1]
                del diffs[i + 1]
                changes = True
        i += 1
    if changes:
        _cleanup_merge(diffs)


def _cleanup_semantic(diffs: list[Diff]) -> None:
    """Drop equalities no longer than the edits around them; then align edits to word edges."""
    if not diffs:
        return
    changes = False
    equalities: list[int] = []
    last_equality = b""
    ins1 = del1 = ins2 = del2 = 0
    i = 0
    while i < len(diffs):
        op, text = diffs[i]
        if op == EQUAL:
            equalities.append(i)
            ins1, del1 = ins2, del2
            ins2 = del2 = 0
            last_equality = text
        else:
            if op == INSERT:
                ins2 += len(text)
            else:
                del2 += len(text)
            if (
                last_equality
                and len(last_equality) <= max(ins1, del1)
                and len(last_equality) <= max(ins2, del2)
            ):
                k = equalities.pop()
                diffs[k][0] = INSERT
                diffs.insert(k, [DELETE, last_equality])
                if equalities:
                    equalities.pop()
                ins1 = del1 = ins2 = del2 = 0
                last_equality = b""
                changes = True
                if equalities:
                    i = equalities[-1]
                else:
                    i = 0
                    continue
        i += 1

    if changes:
        _cleanup_merge(diffs)
    _cleanup_semantic_lossless(diffs)

    # Split overlaps between a deletion and the following insertion into an equality:
    # <del>abcxxx</del><ins>xxxdef</ins> -> <del>abc</del>xxx<ins>def</ins>.
    i = 1
    while i < len(diffs):
        if diffs[i - 1][0] == DELETE and diffs[i][0] == INSERT:
            deletion, insertion = diffs[i - 1][1], diffs[i][1]
            o1 = _common_overlap(deletion, insertion)
            o2 = _common_overlap(insertion, deletion)
            if o1 >= o2:
                if o1 >= len(deletion) / 2 or o1 >= len(insertion) / 2:
                    diffs.insert(i, [EQUAL, insertion[:o1]])
                    diffs[i - 1][1] = deletion[: len(deletion) - o1]
                    diffs[i + 1][1] = insertion[o1:]
                    i += 1
            elif o2 >= len(deletion) / 2 or o2 >= len(insertion) / 2:
                diffs.insert(i, [EQUAL, deletion[:o2]])
                diffs[i - 1] = [INSERT, insertion[: len(insertion) - o2]]
                diffs[i + 1] = [DELETE, deletion[o2:]]
                i += 1
            i += 1
        i += 1


def _cleanup_semantic_lossless(diffs: list[Diff]) -> None:
    """Slide single edits between equalities to the most 'natural' boundary."""
    i = 1
    while i < len(diffs) - 1:
        if diffs[i - 1][0] == EQUAL and diffs[i + 1][0] == EQUAL:
            eq1, edit, eq2 = diffs[i - 1][1], diffs[i][1], diffs[i + 1][1]
            n = _common_suffix(eq1, edit)
            if n:
                common = edit[len(edit) - n :]
                eq1 = eq1[: len(eq1) - n]
                edit = common + edit[: len(edit) - n]
                eq2 = common + eq2
            best_eq1, best_edit, best_eq2 = eq1, edit, eq2
            best_score = _semantic_score(eq1, edit) + _semantic_score(edit, eq2)
            while edit and eq2 and edit[0] == eq2[0]:
                eq1 += edit[:1]
                edit = edit[1:] + eq2[:1]
                eq2 = eq2[1:]
                score = _semantic_score(eq1, edit) + _semantic_score(edit, eq2)
                if score >= best_score:  # >= favours trailing over leading whitespace
                    best_score = score
                    best_eq1, best_edit, best_eq2 = eq1, edit, eq2
            if diffs[i - 1][1] != best_eq1:
                if best_eq1:
                    diffs[i - 1][1] = best_eq1
                else:
                    del diffs[i - 1]
                    i -= 1
                diffs[i][1] = best_edit
                if best_eq2:
                    diffs[i + 1][1] = best_eq2
                else:
                    del diffs[i + 1]
                    i -= 1
        i += 1


def _semantic_score(one: bytes, two: bytes) -> int:
    """Score 0..6 for how natural the boundary between ``one`` and ``two`` is (C locale)."""
    if not one or not two:
        return 6
    c1, c2 = one[-1], two[0]
    non_alnum1 = c1 not in _ALNUM
    non_alnum2 = c2 not in _ALNUM
    space1 = non_alnum1 and c1 in _SPACE
    space2 = non_alnum2 and c2 in _SPACE
    break1 = space1 and c1 in (10, 13)
    break2 = space2 and c2 in (10, 13)
    blank1 = break1 and (one.endswith(b"\n\n") or one.endswith(b"\n\r\n"))
    blank2 = break2 and (two.startswith((b"\n\n", b"\n\r\n", b"\r\n\n", b"\r\n\r\n")))
    if blank1 or blank2:
        return 5
    if break1 or break2:
        return 4
    if non_alnum1 and not space1 and space2:
        return 3
    if space1 or space2:
        return 2
    if non_alnum1 or non_alnum2:
        return 1
    return 0


def _cleanup_efficiency(diffs: list[Diff]) -> None:
    """Drop short equalities that cost more to keep than to fold into the edits around them."""
    if not diffs:
        return
    changes = False
    equalities: list[int] = []
    last_equality = b""
    pre_ins = pre_del = post_ins = post_del = False
    i = 0
    while i < len(diffs):
        op, text = diffs[i]
        if op == EQUAL:
            if len(text) < _EDIT_COST and (post_ins or post_del):
                equalities.append(i)
                pre_ins, pre_del = post_ins, post_del
                last_equality = text
            else:
                equalities = []
                last_equality = b""
            post_ins = post_del = False
        else:
            if op == DELETE:
                post_del = True
            else:
                post_ins = True
            if last_equality and (
                (pre_ins and pre_del and post_ins and post_del)
                or (
                    len(last_equality) < _EDIT_COST // 2
                    and pre_ins + pre_del + post_ins + post_del == 3
                )
            ):
                k = equalities.pop()
                diffs[k][0] = INSERT
                diffs.insert(k, [DELETE, last_equality])
                last_equality = b""
                changes = True
                if pre_ins and pre_del:
                    post_ins = post_del = True
                    equalities = []
                    i = k + 1
                else:
                    if equalities:
                        equalities.pop()
                    post_ins = post_del = False
                    if equalities:
                        i = equalities[-1]
                    else:
                        i = 0
                        continue
        i += 1
    if changes:
        _cleanup_merge(diffs)
