"""The cases of qmp_fuzz.py: seeded generators of malformed, truncated,
wrongly typed and oversized QMP messages, each with what the daemon must
answer to every complete object in it. Standard library only."""

import json

LIMIT = 1 << 20          # ringbackd's QMPServer.messageLimit


class Generator:
    """Seeded cases. A case is (category, payload, expectations, options):
    one expectation per complete object in the payload, each 'error',
    'not-found' (CommandNotFound) or 'version' (a correct query-version)."""

    def __init__(self, rng, node):
        self.rng = rng
        self.node = node
        self.counter = 0

    def ident(self):
        self.counter += 1
        n = self.counter
        return self.rng.choice([n, f"fuzz-{n}", {"n": n}, [n, "x"], None, n + 0.5, True, ""])

    def message(self, command, arguments=None, with_id=True, **extra):
        m = {"execute": command}
        if arguments is not None:
            m["arguments"] = arguments
        if with_id:
            m["id"] = self.ident()
        m.update(extra)
        return m

    def dump(self, m):
        """Compact JSON, non-ASCII either escaped or as raw UTF-8."""
        return json.dumps(m, separators=(",", ":"), ensure_ascii=self.rng.random() < 0.5).encode()

    def wrong_value(self, kind):
        """A JSON value that is not of `kind` (string, integer, boolean, array)."""
        choices = {
            "string": [5, -1, 1.5, True, None, [], ["a"], {}, {"path": "x"}],
            "integer": ["x", "65536", 1.5, -0.25, True, None, [], {}, 1e300],
            "boolean": ["true", 1, 0, None, [], {}, "yes"],
            "array": ["a", 1, None, {}, True],
        }[kind]
        return self.rng.choice(choices)

    # Real commands: required and optional arguments with their types. The
    # values given make each command fail only by the corruption applied.
    def real_command(self):
        node = self.node
        table = [
            ("block-dirty-bitmap-add", {"node": ("string", node), "name": ("string", "fz")},
             {"granularity": ("integer", 65536), "persistent": ("boolean", False), "disabled": ("boolean", False)}),
            ("block-dirty-bitmap-remove", {"node": ("string", node), "name": ("string", "nonexistent")}, {}),
            ("block-dirty-bitmap-clear", {"node": ("string", node), "name": ("string", "nonexistent")}, {}),
            ("block-dirty-bitmap-enable", {"node": ("string", node), "name": ("string", "nonexistent")}, {}),
            ("block-dirty-bitmap-disable", {"node": ("string", node), "name": ("string", "nonexistent")}, {}),
            ("block-dirty-bitmap-merge", {"node": ("string", node), "target": ("string", "nonexistent"),
                                          "bitmaps": ("array", ["nonexistent"])}, {}),
            ("drive-backup", {"device": ("string", node), "target": ("string", "/nonexistent/fuzz.qcow2"),
                              "sync": ("string", "full")},
             {"format": ("string", "qcow2"), "speed": ("integer", 0), "bitmap": ("string", "nonexistent"),
              "bitmap-mode": ("string", "on-success")}),
            ("x-track-stop", {"node": ("string", "/dev/null")}, {}),
            ("x-tracker-barrier", {"node": ("string", "/dev/null")}, {}),
        ]
        return self.rng.choice(table)

    def wrong_types(self):
        command, required, optional = self.real_command()
        args = {k: v for k, (_, v) in required.items()}
        fields = dict(required)
        for k, (kind, v) in optional.items():
            if self.rng.random() < 0.5:
                args[k] = v
                fields[k] = (kind, v)
        victim = self.rng.choice(sorted(fields))
        args[victim] = self.wrong_value(fields[victim][0])
        return self.dump(self.message(command, args)), ["error"]

    def missing_arguments(self):
        command, required, _ = self.real_command()
        args = {k: v for k, (_, v) in required.items()}
        del args[self.rng.choice(sorted(args))]
        if self.rng.random() < 0.2:
            return self.dump(self.message(command)), ["error"]
        return self.dump(self.message(command, args)), ["error"]

    def bad_values(self):
        node = self.node
        r = self.rng
        bad_nodes = ["", "/", "/dev/null", "/etc/hostname", "/nonexistent/dev", "relative/path", "/dev/" + "x" * 5000,
                     "/proc/self/fd/0", "/dev/loop-control", "\u00e9\u4e2d"]
        cases = [
            ("block-dirty-bitmap-add", {"node": r.choice(bad_nodes), "name": "fz"}),
            ("block-dirty-bitmap-add", {"node": node, "name": "fz", "granularity": r.choice([0, 1, 3, 511, 100000, 1 << 40, 1 << 62])}),
            ("block-dirty-bitmap-add", {"node": node, "name": r.choice(["", "n" * 1024])}),
            ("block-dirty-bitmap-remove", {"node": node, "name": "missing-" + str(r.randrange(1 << 30))}),
            ("block-dirty-bitmap-merge", {"node": node, "target": "nonexistent", "bitmaps": r.choice([[], [5], [{"x": 1}], [None]])}),
            ("drive-backup", {"device": node, "target": "/nonexistent/t", "sync": r.choice(["none", "top", "", "FULL", "x" * 100])}),
            ("drive-backup", {"device": node, "target": "/nonexistent/t", "sync": "incremental"}),
            ("drive-backup", {"device": node, "target": "/nonexistent/t", "sync": "full", "bitmap-mode": "sometimes"}),
            ("drive-backup", {"device": node, "target": "/nonexistent/t", "sync": "full", "format": r.choice(["vmdk", "", "QCOW2"])}),
            ("drive-backup", {"device": node, "target": node, "sync": "full", "format": "raw"}),
            ("drive-backup", {"device": r.choice(bad_nodes), "target": "/nonexistent/t", "sync": "full"}),
            ("x-tracker-barrier", {"node": r.choice(bad_nodes)}),
        ]
        command, args = r.choice(cases)
        return self.dump(self.message(command, args)), ["error"]

    def out_of_range(self):
        """Integers of the right type that no unsigned field can hold."""
        value = self.rng.choice([-1, -65536, -(1 << 63), -(1 << 40)])
        return self.dump(self.message("block-dirty-bitmap-add",
                                      {"node": self.node, "name": "fz", "granularity": value})), ["error"]

    def execute_wrong_type(self):
        m = self.message("x")
        m["execute"] = self.rng.choice([5, -1.5, [], ["query-version"], None, True, {}, {"execute": "query-version"}])
        return self.dump(m), ["error"]

    def arguments_wrong_type(self):
        m = self.message(self.rng.choice(["query-version", "block-dirty-bitmap-add", "x-nope"]))
        m["arguments"] = self.rng.choice([5, "node", [], [{"node": "x"}], None, False, 1.25])
        return self.dump(m), ["error"]

    def unknown_command(self):
        r = self.rng
        name = r.choice(["", " ", "query-versio", "QUERY-VERSION", "query-version ", "x-" + str(r.randrange(1 << 30)),
                         "\u00e9\u4e2d\U0001F600", "query-version\u0000", "../../etc/passwd", "a" * r.randrange(1, 10000),
                         "transaction-" + "\t", "qmp_capabilities2"])
        args = r.choice([None, {}, {"a": 1}, {"node": self.node}])
        return self.dump(self.message(name, args)), ["not-found"]

    def repeated_capabilities(self):
        return self.dump(self.message("qmp_capabilities", self.rng.choice([None, {}, {"enable": ["oob"]}]))), ["not-found"]

    def invalid_json(self):
        n = self.rng.randrange(1 << 20)
        templates = [
            '{"execute": }', '{"execute" "query-version"}', '{"execute": "x-fuzz-trailing",}', '{"a": [1,]}', "{execute: 1}",
            "{\"execute\": 'query-version'}", '{"execute": "query-version" "id": %d}', '{"id": %d, "execute": tru}',
            '{"a": 01}', '{"a": .5}', '{"a": +1}', '{"a": 1e}', '{"a": "\\x"}', '{"a": "\\u12"}', '{"a": NaN}',
            '{"a": Infinity}', '{"a": [1,]}', '{"a": [,1]}', '{"a": "b": "c"}', "{:}", '{"a"}', "{1: 2}",
            '{"a": "tab\there"}', '{"a": 1 2}', '{"id": %d, "execute": "query-version", "x": 1e400}',
            '{"id": "\\ud800", "execute": "query-version"}', '{"execute": "query-version", "id": %d]',
            '{"execute": "query-version", "arguments": {"a": [}]}', '{"a": "\\uZZZZ"}', '{"a": nul}',
        ]
        text = self.rng.choice(templates)
        if "%d" in text:
            text %= n
        return text.encode(), ["error"]

    def mutated(self):
        """A message that fails even when valid (an unknown command), with a
        few bytes replaced by others that leave the framing intact."""
        data = bytearray(self.dump(self.message("x-fuzz-nonexistent", {"a": [1, "b", {"c": None}], "d": 2.5})))
        for _ in range(self.rng.randrange(1, 4)):
            i = self.rng.randrange(len(data))
            if data[i] not in b'{}[]"\\':
                data[i] = self.rng.choice(b":,'a0-+.eE /\x01\x7f\t\n")
        return bytes(data), ["error"]

    def huge_string(self):
        r = self.rng
        size = r.randrange(1 << 16, LIMIT - 4096)
        unit = "".join(r.choice("ab\u00e9\u4e2d\"\\") for _ in range(64))
        big = unit * (size // len(json.dumps(unit)))     # escaped: the longest it can be
        where = r.choice(["command", "node", "id", "name"])
        if where == "command":
            return self.dump(self.message("x-" + big)), ["not-found"]
        if where == "node":
            return self.dump(self.message("block-dirty-bitmap-add", {"node": big, "name": "fz"})), ["error"]
        if where == "name":
            return self.dump(self.message("block-dirty-bitmap-remove", {"node": self.node, "name": big})), ["error"]
        m = self.message("x-fuzz-nonexistent")
        m["id"] = big
        return self.dump(m), ["not-found"]

    def deep_nesting(self):
        r = self.rng
        depth = r.choice([100_000, 50_000, 600, 513])
        kind = r.randrange(4)
        if kind == 0:        # far deeper than any parser should follow: a parse error
            return b'{"execute":"x","id":1,"arguments":{"a":' + b"[" * depth + b"]" * depth + b"}}", ["error"]
        if kind == 1:
            return b'{"execute":"x","arguments":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}", ["error"]
        if kind == 2:        # shallow enough to parse: an unknown command with its id
            d = r.randrange(10, 200)
            m = self.message("x-deep")
            m["arguments"] = {"a": json.loads("[" * d + "]" * d)}
            return self.dump(m), ["not-found"]
        m = self.message("x-deep")
        d = r.randrange(10, 200)
        m["id"] = json.loads("[" * d + "1" + "]" * d)
        return self.dump(m), ["not-found"]

    def nul_bytes(self):
        return self.rng.choice([
            (b'{"execute":"query-version\x00","id":7}', ["error"]),
            (b'{"execute":\x00"query-version"}', ["error"]),
            (b'{\x00}', ["error"]),
            (self.dump(self.message("query-version\u0000")), ["not-found"]),
            (self.dump(self.message("block-dirty-bitmap-add", {"node": self.node + "\u0000", "name": "fz"})), ["error"]),
            (self.dump(self.message("block-dirty-bitmap-remove", {"node": self.node, "name": "a\u0000b"})), ["error"]),
        ])

    def invalid_utf8(self):
        bad = self.rng.choice([b"\xff", b"\xc0\x80", b"\x80", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                               b"\xf4\x90\x80\x80", b"\xfe\xfe"])
        where = self.rng.randrange(3)
        if where == 0:
            return b'{"execute":"query-version","id":"' + bad + b'"}', ["error"]
        if where == 1:
            return b'{"execute":"' + bad + b'","id":3}', ["error"]
        return b'{"execute":"block-dirty-bitmap-add","arguments":{"node":"' + self.node.encode() + b'","name":"' + bad + b'"}}', ["error"]

    def limit_boundary(self):
        """Objects of exactly the limit (accepted) and one byte more (refused)."""
        m = self.message("x-fuzz-nonexistent")
        m["id"] = self.counter
        m["arguments"] = {"pad": ""}
        base = len(self.dump(m))
        over = self.rng.random() < 0.5
        m["arguments"]["pad"] = "p" * (LIMIT - base + (1 if over else 0))
        return self.dump(m), ([] if over else ["not-found"])

    def oversized(self):
        m = self.message("x-fuzz-nonexistent")
        m["arguments"] = {"pad": "o" * (LIMIT + self.rng.randrange(1, 1 << 18))}
        return self.dump(m), []

    def not_an_object(self):
        return self.rng.choice([b"[1,2]", b'"query-version"', b"5", b"null", b"true", b"[]", b'[{"execute":"query-version"}]',
                                b"}", b"]", b"\x00", b"\xff", b"execute", b"-1"]), []

    def truncated(self):
        payload, _ = self.rng.choice([self.wrong_types, self.unknown_command, self.bad_values])()
        return payload[: self.rng.randrange(1, len(payload) - 1)], []

    def unbalanced_deep(self):
        return b'{"execute":"x","arguments":{"a":' + b"[" * self.rng.choice([100_000, 1000]), []

    def valid_version(self):
        return self.dump(self.message("query-version")), ["version"]

    # Weighted categories whose payloads leave the connection usable.
    framed = [("wrong-types", wrong_types, 22), ("missing-arguments", missing_arguments, 10),
              ("bad-values", bad_values, 10), ("out-of-range", out_of_range, 2),
              ("execute-wrong-type", execute_wrong_type, 8), ("arguments-wrong-type", arguments_wrong_type, 6),
              ("unknown-command", unknown_command, 10), ("repeated-capabilities", repeated_capabilities, 2),
              ("invalid-json", invalid_json, 12), ("mutated", mutated, 10), ("huge-string", huge_string, 0.4),
              ("deep-nesting", deep_nesting, 0.6), ("nul-bytes", nul_bytes, 3), ("invalid-utf8", invalid_utf8, 4)]
    # Categories whose payloads end the connection (sent on their own).
    closing = [("limit-boundary", limit_boundary, 0.15), ("oversized", oversized, 0.15),
               ("not-an-object", not_an_object, 4), ("truncated", truncated, 5), ("unbalanced-deep", unbalanced_deep, 0.3)]
