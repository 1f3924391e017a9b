"""Device trees: read DTS source, write DTS source and flattened DTB blobs.

Devicetree Specification v0.4: §6 (DTS format) for the reader and writer, §5 (flattened
devicetree: header, memory reservation block, structure block, strings block) for the blob,
version 17 / last compatible 16 as dtc writes.  The reader takes what partial device trees
(Xen's ``xl.cfg device_tree=``) and board files use: ``/dts-v1/;``, ``/memreserve/``, nodes
and properties with labels, strings, ``<cells>`` (numbers, character literals, C-like
expressions in parentheses, ``&label`` and ``&{/path}`` references, ``/bits/ N``),
``[bytes]``, property values that are ``&label`` (a path), ``&label { ... };`` amendments,
``/delete-node/`` and ``/delete-property/``.  It refuses the C preprocessor (``#include``,
macros): run ``cpp`` first.  Every syntax or reference error is a ``DtsError``.

``to_dtb`` resolves references as dtc does: a cell reference becomes the target's
``phandle`` (one is given, the lowest unused from 1, to a referenced node without one), a
property that is a reference becomes the target's full path string.

Also here: ``smmuv3_node``, the ``arm,smmu-v3`` binding's node for a vIOMMU
(Documentation/devicetree/bindings/iommu/arm,smmu-v3.yaml).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import construct as c

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
FDT_VERSION, FDT_LAST_COMP_VERSION = 17, 16

FdtHeader = c.Struct(
    "magic" / c.Int32ub, "totalsize" / c.Int32ub, "off_dt_struct" / c.Int32ub,
    "off_dt_strings" / c.Int32ub, "off_mem_rsvmap" / c.Int32ub, "version" / c.Int32ub,
    "last_comp_version" / c.Int32ub, "boot_cpuid_phys" / c.Int32ub,
    "size_dt_strings" / c.Int32ub, "size_dt_struct" / c.Int32ub,
)
FdtReserveEntry = c.Struct("address" / c.Int64ub, "size" / c.Int64ub)
FdtProp = c.Struct("len" / c.Int32ub, "nameoff" / c.Int32ub)


class DtsError(Exception):
    """The device-tree source is wrong (the input's fault); says where."""


# -- the tree ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """``&label`` or ``&{/path}``: in cells a phandle, as a whole value a path."""

    target: str


@dataclass
class Cells:
    items: list[int | Ref]
    bits: int = 32


@dataclass
class Bytes:
    data: bytes


@dataclass
class String:
    text: str


Value = Cells | Bytes | String | Ref


@dataclass
class Property:
    name: str
    values: list[Value] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass
class Node:
    name: str
    props: list[Property] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def prop(self, name: str) -> Property | None:
        return next((p for p in self.props if p.name == name), None)

    def set(self, name: str, *values: Value) -> Property:
        """Replace (in place, keeping its position) or append a property."""
        old = self.prop(name)
        if old is not None:
            old.values = list(values)
            return old
        prop = Property(name, list(values))
        self.props.append(prop)
        return prop

    def child(self, name: str) -> Node | None:
        return next((n for n in self.children if n.name == name), None)

    def cells(self, name: str, default: int | None = None) -> list[int]:
        """A property of plain 32-bit cells (references are not numbers: DtsError)."""
        prop = self.prop(name)
        if prop is None:
            return [] if default is None else [default]
        out: list[int] = []
        for v in prop.values:
            if not isinstance(v, Cells) or v.bits != 32 or any(isinstance(i, Ref) for i in v.items):
                raise DtsError(f"{self.name}: {name} is not a list of numbers")
            out += [int(i) for i in v.items]  # type: ignore[arg-type]
        return out

    def string(self, name: str) -> str | None:
        prop = self.prop(name)
        if prop is None or not prop.values or not isinstance(prop.values[0], String):
            return None
        return prop.values[0].text


@dataclass
class Tree:
    root: Node = field(default_factory=lambda: Node("/"))
    memreserve: list[tuple[int, int]] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) in tree order."""
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            for child in reversed(node.children):
                stack.append(((path.rstrip("/") + "/" + child.name), child))

    def labels(self) -> dict[str, tuple[str, Node]]:
        out: dict[str, tuple[str, Node]] = {}
        for path, node in self.walk():
            for label in node.labels:
                if label in out:
                    raise DtsError(f"label '{label}' is defined twice")
                out[label] = (path, node)
        return out

    def find(self, target: str) -> tuple[str, Node] | None:
        """A node by path (``/a/b``; a unit address may be left out where unambiguous), by
        label, or by ``&label`` / ``&{/path}``; with its full path."""
        target = target.removeprefix("&")
        if target.startswith("{") and target.endswith("}"):
            target = target[1:-1]
        if not target.startswith("/"):
            return self.labels().get(target)
        node, names = self.root, []
        for part in [p for p in target.split("/") if p]:
            found = node.child(part)
            if found is None:
                matches = [n for n in node.children if n.name.split("@")[0] == part]
                found = matches[0] if len(matches) == 1 else None
            if found is None:
                return None
            node = found
            names.append(node.name)
        return "/" + "/".join(names), node

    def phandles(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for path, node in self.walk():
            for name in ("phandle", "linux,phandle"):
                prop = node.prop(name)
                if prop is not None and prop.values and isinstance(prop.values[0], Cells) \
                        and prop.values[0].items and isinstance(prop.values[0].items[0], int):
                    value = prop.values[0].items[0]
                    if out.get(value, path) != path:
                        raise DtsError(f"phandle {value:#x} used by {out[value]} and {path}")
                    out[value] = path
        return out


# -- reading DTS ---------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.[^']*)')
  | (?P<directive>/[a-z][a-z0-9-]*/)
  | (?P<ref>&\{[^}]*\}|&[A-Za-z_][A-Za-z0-9_]*)
  | (?P<label>[A-Za-z_][A-Za-z0-9_]*:(?!:))
  | (?P<word>[A-Za-z0-9,._+*#?@-]+|/)
  | (?P<punct><<|>>|<=|>=|==|!=|&&|\|\||[{};=<>\[\](),&|^~!%*/+-])
""", re.VERBOSE | re.DOTALL)


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


_CELL_TOKEN = re.compile(r"""
    (?P<word>0[xX][0-9a-fA-F]+[ULul]*|[0-9]+[ULul]*|[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct><<|>>|<=|>=|==|!=|&&|\|\||[()<>&|^~!%*/+-])
""", re.VERBOSE)


def _split_cell_word(tok: _Tok) -> list[_Tok]:
    """Names may hold ``+``, ``-``, ``*``...; inside ``<...>`` they are operators."""
    out: list[_Tok] = []
    pos = 0
    while pos < len(tok.text):
        m = _CELL_TOKEN.match(tok.text, pos)
        if m is None:
            raise DtsError(f"line {tok.line}: '{tok.text}' in cells")
        out.append(_Tok(m.lastgroup or "", m.group(), tok.line))
        pos = m.end()
    return out


def _tokens(text: str) -> list[_Tok]:
    if re.search(r"^\s*#\s*(include|define|if)", text, re.MULTILINE):
        raise DtsError("C preprocessor directives are not read here: run cpp first")
    out: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DtsError(f"line {line}: unexpected '{text[pos:pos + 10]}'")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append(_Tok(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "v": "\v", "f": "\f"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if m is None:
                raise DtsError(f"bad escape in '{body}'")
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            assert m is not None
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise DtsError("unexpected end of the source")
        self.i += 1
        return tok

    def expect(self, text: str) -> _Tok:
        tok = self.next()
        if tok.text != text:
            raise DtsError(f"line {tok.line}: expected '{text}', found '{tok.text}'")
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    # -- top level --

    def tree(self) -> Tree:
        tree = Tree()
        seen_root = False
        if not self.at("/dts-v1/"):
            raise DtsError("line 1: the source must start with /dts-v1/;")
        while self.peek() is not None:
            tok = self.next()
            if tok.text in ("/dts-v1/", "/plugin/"):
                if tok.text == "/plugin/":
                    raise DtsError(f"line {tok.line}: overlays (/plugin/) are not read here")
                self.expect(";")
            elif tok.text == "/memreserve/":
                address, size = self.number(), self.number()
                self.expect(";")
                tree.memreserve.append((address, size))
            elif tok.text == "/":
                self.node_body(tree.root)
                seen_root = True
            elif tok.kind == "ref":
                found = tree.find(tok.text)
                if found is None:
                    raise DtsError(f"line {tok.line}: {tok.text} names no node")
                self.node_body(found[1])
            elif tok.text == "/delete-node/":
                ref = self.next()
                self.expect(";")
                found = tree.find(ref.text)
                if found is None:
                    raise DtsError(f"line {ref.line}: {ref.text} names no node")
                self._delete(tree, found[0])
            else:
                raise DtsError(f"line {tok.line}: unexpected '{tok.text}'")
        if not seen_root:
            raise DtsError("no root node (/ { ... };)")
        return tree

    @staticmethod
    def _delete(tree: Tree, path: str) -> None:
        parent_path, _, name = path.rpartition("/")
        found = tree.find(parent_path or "/")
        assert found is not None
        found[1].children = [n for n in found[1].children if n.name != name]

    def node_body(self, node: Node) -> None:
        self.expect("{")
        while not self.at("}"):
            labels: list[str] = []
            while (tok := self.peek()) is not None and tok.kind == "label":
                labels.append(self.next().text[:-1])
            tok = self.next()
            if tok.text == "/delete-property/":
                name = self.next().text
                self.expect(";")
                node.props = [p for p in node.props if p.name != name]
                continue
            if tok.text == "/delete-node/":
                name = self.next().text
                self.expect(";")
                node.children = [n for n in node.children if n.name != name]
                continue
            if tok.kind != "word":
                raise DtsError(f"line {tok.line}: expected a node or property name, "
                               f"found '{tok.text}'")
            if self.at("{"):
                child = node.child(tok.text)
                if child is None:
                    child = Node(tok.text)
                    node.children.append(child)
                child.labels += [lb for lb in labels if lb not in child.labels]
                self.node_body(child)
            else:
                values = self.values() if self.at("=") else []
                self.expect(";")
                prop = node.set(tok.text, *values)
                prop.labels += [lb for lb in labels if lb not in prop.labels]
        self.expect("}")
        self.expect(";")

    def values(self) -> list[Value]:
        self.expect("=")
        out: list[Value] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise DtsError("unexpected end in a property value")
            if tok.kind == "string":
                self.next()
                out.append(String(_unescape(tok.text[1:-1])))
            elif tok.text == "<" or tok.text == "/bits/":
                out.append(self.cells())
            elif tok.text == "[":
                out.append(self.bytestring())
            elif tok.kind == "ref":
                self.next()
                out.append(Ref(tok.text[1:]))
            else:
                raise DtsError(f"line {tok.line}: unexpected '{tok.text}' in a value")
            if not self.at(","):
                return out
            self.next()

    def cells(self) -> Cells:
        bits = 32
        if self.at("/bits/"):
            self.next()
            bits = self.number()
            if bits not in (8, 16, 32, 64):
                raise DtsError(f"/bits/ {bits}: must be 8, 16, 32 or 64")
        self.expect("<")
        items: list[int | Ref] = []
        while not self.at(">"):
            tok = self.peek()
            if tok is not None and tok.kind == "ref":
                if bits != 32:
                    raise DtsError(f"line {tok.line}: references need 32-bit cells")
                self.next()
                items.append(Ref(tok.text[1:]))
                continue
            self.split_word()
            value = self.primary()
            high = value >> bits
            if high and high != (1 << (64 - bits)) - 1:
                raise DtsError(f"{value:#x} does not fit {bits}-bit cells")
            items.append(value & ((1 << bits) - 1))
        self.expect(">")
        return Cells(items, bits)

    def bytestring(self) -> Bytes:
        self.expect("[")
        hexes = ""
        while not self.at("]"):
            tok = self.next()
            if not re.fullmatch(r"[0-9a-fA-F]+", tok.text):
                raise DtsError(f"line {tok.line}: '{tok.text}' in a byte string")
            hexes += tok.text
        self.expect("]")
        if len(hexes) % 2:
            raise DtsError("a byte string needs whole bytes")
        return Bytes(bytes.fromhex(hexes))

    def split_word(self) -> None:
        tok = self.peek()
        if tok is not None and tok.kind == "word":
            self.toks[self.i : self.i + 1] = _split_cell_word(tok)

    def number(self) -> int:
        self.split_word()
        tok = self.next()
        return self._literal(tok)

    @staticmethod
    def _literal(tok: _Tok) -> int:
        if tok.kind == "char":
            text = _unescape(tok.text[1:-1])
            if len(text) != 1:
                raise DtsError(f"line {tok.line}: {tok.text} is not one character")
            return ord(text)
        text = tok.text.rstrip("ULul")
        try:
            if re.fullmatch(r"0[0-7]+", text):
                return int(text, 8)
            return int(text, 0)
        except ValueError:
            raise DtsError(f"line {tok.line}: '{tok.text}' is not a number") from None

    # Expressions in cells: dtc's C subset (no ternary), 64-bit unsigned arithmetic.
    _BINARY = [("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", ">", "<=", ">="),
               ("<<", ">>"), ("+", "-"), ("*", "/", "%")]

    def primary(self) -> int:
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.next()
            value = self.expr(0)
            self.expect(")")
            return value
        if tok is not None and tok.text in ("-", "~", "!"):
            return self.unary()
        return self.number()

    def unary(self) -> int:
        self.split_word()
        tok = self.peek()
        if tok is not None and tok.text in ("-", "~", "!"):
            self.next()
            value = self.unary()
            if tok.text == "-":
                return (-value) & ((1 << 64) - 1)
            if tok.text == "~":
                return ~value & ((1 << 64) - 1)
            return int(not value)
        return self.primary()

    def expr(self, level: int) -> int:
        if level == len(self._BINARY):
            return self.unary()
        value = self.expr(level + 1)
        while True:
            self.split_word()
            tok = self.peek()
            if tok is None or tok.text not in self._BINARY[level]:
                break
            self.next()
            rhs = self.expr(level + 1)
            value = _apply(tok.text, value, rhs, tok.line)
        return value


def _apply(op: str, a: int, b: int, line: int) -> int:
    mask = (1 << 64) - 1
    if op in ("/", "%") and b == 0:
        raise DtsError(f"line {line}: division by zero")
    result = {
        "||": lambda: int(bool(a) or bool(b)), "&&": lambda: int(bool(a) and bool(b)),
        "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
        "==": lambda: int(a == b), "!=": lambda: int(a != b), "<": lambda: int(a < b),
        ">": lambda: int(a > b), "<=": lambda: int(a <= b), ">=": lambda: int(a >= b),
        "<<": lambda: a << (b & 63), ">>": lambda: a >> (b & 63), "+": lambda: a + b,
        "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a // b, "%": lambda: a % b,
    }[op]()
    return result & mask


def parse_dts(text: str) -> Tree:
    """Read DTS source (the subset in the module docstring)."""
    return _Parser(text).tree()


# -- writing DTS ---------------------------------------------------------------------------

def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value_dts(value: Value) -> str:
    if isinstance(value, String):
        return _quote(value.text)
    if isinstance(value, Bytes):
        return "[" + " ".join(f"{b:02x}" for b in value.data) + "]"
    if isinstance(value, Ref):
        return "&" + value.target
    items = " ".join(f"&{i.target}" if isinstance(i, Ref) else f"{i:#x}" for i in value.items)
    prefix = "" if value.bits == 32 else f"/bits/ {value.bits} "
    return f"{prefix}<{items}>"


def to_dts(tree: Tree, header: str = "") -> str:
    """DTS source: labels and references kept, numbers in hex, tabs as dtc writes."""
    lines = ["/dts-v1/;", ""]
    if header:
        lines[1:1] = [f"/* {header} */"]
    for address, size in tree.memreserve:
        lines.append(f"/memreserve/ {address:#x} {size:#x};")

    def emit(node: Node, depth: int) -> None:
        pad = "\t" * depth
        labels = "".join(f"{lb}: " for lb in node.labels)
        lines.append(f"{pad}{labels}{node.name} {{")
        for prop in node.props:
            plabels = "".join(f"{lb}: " for lb in prop.labels)
            if prop.values:
                joined = ", ".join(_value_dts(v) for v in prop.values)
                lines.append(f"{pad}\t{plabels}{prop.name} = {joined};")
            else:
                lines.append(f"{pad}\t{plabels}{prop.name};")
        for child in node.children:
            lines.append("")
            emit(child, depth + 1)
        lines.append(f"{pad}}};")

    emit(tree.root, 0)
    return "\n".join(lines) + "\n"


# -- writing DTB ---------------------------------------------------------------------------

def resolve_phandles(tree: Tree) -> dict[str, int]:
    """Give every node a cell reference names a ``phandle`` (the lowest unused from 1, in
    tree order of the references); path → phandle of every node that has one."""
    used = tree.phandles()
    by_path = {path: value for value, path in used.items()}
    next_free = 1
    for _, node in tree.walk():
        for prop in node.props:
            for value in prop.values:
                if not isinstance(value, Cells):
                    continue
                for item in value.items:
                    if not isinstance(item, Ref):
                        continue
                    found = tree.find(item.target)
                    if found is None:
                        raise DtsError(f"{prop.name}: reference to non-existent node or "
                                       f"label '{item.target}'")
                    path, target = found
                    if path in by_path:
                        continue
                    while next_free in used:
                        next_free += 1
                    used[next_free] = path
                    by_path[path] = next_free
                    target.set("phandle", Cells([next_free]))
    return by_path


def _value_bytes(value: Value, tree: Tree, phandles: dict[str, int]) -> bytes:
    if isinstance(value, String):
        return value.text.encode("latin-1") + b"\0"
    if isinstance(value, Bytes):
        return value.data
    if isinstance(value, Ref):
        found = tree.find(value.target)
        if found is None:
            raise DtsError(f"reference to non-existent node or label '{value.target}'")
        return found[0].encode() + b"\0"
    out = bytearray()
    for item in value.items:
        if isinstance(item, Ref):
            found = tree.find(item.target)
            assert found is not None  # resolve_phandles checked it
            item = phandles[found[0]]
        out += item.to_bytes(value.bits // 8, "big")
    return bytes(out)


def to_dtb(tree: Tree, boot_cpuid_phys: int = 0) -> bytes:
    """A flattened devicetree blob, version 17 (Devicetree Specification §5).  The tree is
    left as it was (references are resolved on a copy)."""
    tree = copy.deepcopy(tree)
    phandles = resolve_phandles(tree)
    strings = bytearray()
    offsets: dict[str, int] = {}
    struct = bytearray()

    def name_offset(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    def pad4() -> None:
        struct.extend(b"\0" * (-len(struct) % 4))

    def emit(node: Node, root: bool) -> None:
        struct.extend(FDT_BEGIN_NODE.to_bytes(4, "big"))
        struct.extend(b"" if root else node.name.encode())
        struct.extend(b"\0")
        pad4()
        for prop in node.props:
            data = b"".join(_value_bytes(v, tree, phandles) for v in prop.values)
            struct.extend(FDT_PROP.to_bytes(4, "big"))
            struct.extend(FdtProp.build({"len": len(data), "nameoff": name_offset(prop.name)}))
            struct.extend(data)
            pad4()
        for child in node.children:
            emit(child, False)
        struct.extend(FDT_END_NODE.to_bytes(4, "big"))

    emit(tree.root, True)
    struct.extend(FDT_END.to_bytes(4, "big"))
    header_size: int = FdtHeader.sizeof()
    rsvmap: bytes = b"".join(FdtReserveEntry.build({"address": a, "size": s})
                             for a, s in [*tree.memreserve, (0, 0)])
    off_rsvmap = (header_size + 7) & ~7
    off_struct = off_rsvmap + len(rsvmap)
    off_strings = off_struct + len(struct)
    total = off_strings + len(strings)
    header: bytes = FdtHeader.build({
        "magic": FDT_MAGIC, "totalsize": total, "off_dt_struct": off_struct,
        "off_dt_strings": off_strings, "off_mem_rsvmap": off_rsvmap, "version": FDT_VERSION,
        "last_comp_version": FDT_LAST_COMP_VERSION, "boot_cpuid_phys": boot_cpuid_phys,
        "size_dt_strings": len(strings), "size_dt_struct": len(struct),
    })
    return header + b"\0" * (off_rsvmap - header_size) + rsvmap + bytes(struct) + bytes(strings)


# -- the vIOMMU node ---------------------------------------------------------------------------

SMMUV3_IRQ_NAMES = ("eventq", "gerror", "priq", "cmdq-sync")
"""The binding's order of ``interrupt-names`` (a subset may be given, in this order)."""
GIC_SPI = 0
IRQ_TYPE_EDGE_RISING = 1


def reg_cells(value: int, ncells: int) -> list[int | Ref]:
    if value >> (32 * ncells):
        raise DtsError(f"{value:#x} does not fit {ncells} cells")
    return [(value >> (32 * (ncells - 1 - i))) & 0xFFFF_FFFF for i in range(ncells)]


def smmuv3_node(*, base: int, size: int, label: str, phandle: int | None,
                address_cells: int, size_cells: int, spis: dict[str, int] | None,
                interrupt_parent: int | None, combined_spi: int | None = None,
                coherent: bool = True) -> Node:
    """An ``arm,smmu-v3`` node: ``iommu@<base>``, one ``reg`` range, ``#iommu-cells = <1>``;
    interrupts are GIC SPIs (3 cells), by name in the binding's order, or one ``combined``."""
    node = Node(f"iommu@{base:x}", labels=[label])
    node.set("compatible", String("arm,smmu-v3"))
    node.set("reg", Cells(reg_cells(base, address_cells) + reg_cells(size, size_cells)))
    if combined_spi is not None:
        node.set("interrupts", Cells([GIC_SPI, combined_spi, IRQ_TYPE_EDGE_RISING]))
        node.set("interrupt-names", String("combined"))
    elif spis:
        names = [n for n in SMMUV3_IRQ_NAMES if n in spis]
        node.set("interrupts", Cells([x for n in names
                                      for x in (GIC_SPI, spis[n], IRQ_TYPE_EDGE_RISING)]))
        node.set("interrupt-names", *[String(n) for n in names])
    if interrupt_parent:
        node.set("interrupt-parent", Cells([interrupt_parent]))
    node.set("#iommu-cells", Cells([1]))
    if coherent:
        node.set("dma-coherent")
    if phandle is not None:
        node.set("phandle", Cells([phandle]))
    return node
