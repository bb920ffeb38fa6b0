/// The TOML subset ringback's configuration is written in, read by our own
/// parser so that every error can name its line and key.
///
/// Supported: `# comments`; `[table]` headers with dotted names
/// (`[plan.nightly]`, segments bare or quoted); `key = value` lines with bare
/// (`A-Za-z0-9_-`) or quoted keys; values that are basic strings (`"..."`, with
/// TOML's escapes), literal strings (`'...'`), decimal integers (`+`/`-`,
/// `_` between digits), booleans, and arrays of strings (across lines, with
/// comments and a trailing comma). Refused with a clear message: multi-line
/// strings, floats, dates, inline tables, arrays of tables, dotted keys on
/// the left of `=`, duplicate keys and tables.
public enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case stringArray([String])

    /// The value as TOML would write it, for "got ..." in messages.
    public var written: String {
        switch self {
        case .string(let s): return quoted(s)
        case .integer(let i): return String(i)
        case .boolean(let b): return b ? "true" : "false"
        case .stringArray(let a): return "[" + a.map(quoted).joined(separator: ", ") + "]"
        }
    }

    /// What kind of value this is, in words.
    public var kind: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .stringArray: "a list"
        }
    }
}

/// `s` in double quotes with TOML's escapes.
func quoted(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if c.value < 0x20 || c.value == 0x7f {
                out += "\\u" + String(repeating: "0", count: 4 - String(c.value, radix: 16).count)
                    + String(c.value, radix: 16).uppercased()
            } else {
                out.unicodeScalars.append(c)
            }
        }
    }
    return out + "\""
}

/// One `key = value` line.
public struct TOMLEntry: Equatable, Sendable {
    public let key: String
    public let line: Int
    public let value: TOMLValue
}

/// One table: its header's path and line (the root table has path [] and
/// line 0) and its entries in file order.
public struct TOMLTable: Equatable, Sendable {
    public let path: [String]
    public let line: Int
    public internal(set) var entries: [TOMLEntry]

    /// The dotted name, with segments that are not bare keys in quotes.
    public var name: String { TOMLTable.dotted(path) }

    static func dotted(_ path: [String]) -> String {
        path.map { isBareKey($0) ? $0 : quoted($0) }.joined(separator: ".")
    }

    /// The dotted name of `key` in this table.
    public func keyPath(_ key: String) -> String { TOMLTable.dotted(path + [key]) }
}

func isBareKey(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.allSatisfy(isBareKeyByte)
}

func isBareKeyByte(_ b: UInt8) -> Bool {
    (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b == 0x2d || b == 0x5f
}

/// A parsed file: the root table first, then every table in the order of its header.
public struct TOMLDocument: Equatable, Sendable {
    public let tables: [TOMLTable]

    /// Parses `text`; `file` is only used in error messages. The first syntax
    /// error stops the parse.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> TOMLDocument {
        var parser = TOMLParser(bytes: Array(text.utf8), file: file)
        return try parser.document()
    }

    /// Parses raw bytes, refusing bytes that are not UTF-8 with the line they are on.
    public static func parse(bytes: [UInt8], file: String) throws(ConfigError) -> TOMLDocument {
        var line = 1
        var start = 0
        for i in 0...bytes.count where i == bytes.count || bytes[i] == 0x0a {
            if String(validating: bytes[start..<i], as: UTF8.self) == nil {
                throw ConfigError(file: file, line: line, key: nil, reason: "the line is not valid UTF-8")
            }
            line += 1
            start = i + 1
        }
        var parser = TOMLParser(bytes: bytes, file: file)
        return try parser.document()
    }
}

/// A byte scanner over the file; `line` follows every newline it consumes.
struct TOMLParser {
    let bytes: [UInt8]
    let file: String
    var i = 0
    var line = 1
    var tables: [TOMLTable] = [TOMLTable(path: [], line: 0, entries: [])]
    /// Where each table and each key was first defined, for duplicate errors.
    var tableLines: [[String]: Int] = [:]

    init(bytes: [UInt8], file: String) {
        // A UTF-8 byte-order mark is allowed at the very start.
        self.bytes = bytes.starts(with: [0xef, 0xbb, 0xbf]) ? Array(bytes.dropFirst(3)) : bytes
        self.file = file
    }

    private func error(_ reason: String, key: String? = nil, line: Int? = nil) -> ConfigError {
        ConfigError(file: file, line: line ?? self.line, key: key, reason: reason)
    }

    private func peek(_ offset: Int = 0) -> UInt8? {
        i + offset < bytes.count ? bytes[i + offset] : nil
    }

    private mutating func skipSpaces() {
        while let b = peek(), b == 0x20 || b == 0x09 { i += 1 }
    }

    private mutating func skipComment() throws(ConfigError) {
        guard peek() == UInt8(ascii: "#") else { return }
        while let b = peek(), b != 0x0a {
            if b == 0x0d && peek(1) == 0x0a { break }
            if (b < 0x20 && b != 0x09) || b == 0x7f {
                throw error("control character \(describe(b)) in a comment")
            }
            i += 1
        }
    }

    /// Consumes a newline (LF or CRLF); false when there is none here.
    private mutating func newline() -> Bool {
        if peek() == 0x0a { i += 1; line += 1; return true }
        if peek() == 0x0d && peek(1) == 0x0a { i += 2; line += 1; return true }
        return false
    }

    /// After a header or a value: spaces, an optional comment, then the end of the line.
    private mutating func endOfLine(key: String?, after what: String = "the value") throws(ConfigError) {
        skipSpaces()
        try skipComment()
        if i >= bytes.count || newline() { return }
        throw error("unexpected \(describeHere()) after \(what); one key = value per line, comments start with #", key: key)
    }

    private func describe(_ b: UInt8) -> String {
        b >= 0x21 && b < 0x7f ? "'\(Character(Unicode.Scalar(b)))'"
            : "0x" + (b < 0x10 ? "0" : "") + String(b, radix: 16, uppercase: true)
    }

    private func describeHere() -> String {
        guard let b = peek() else { return "end of file" }
        if b == 0x0a || b == 0x0d { return "end of line" }
        var j = i
        while j < bytes.count, j - i < 20, bytes[j] != 0x0a, bytes[j] != 0x20, bytes[j] != 0x09 { j += 1 }
        return "'" + String(decoding: bytes[i..<j], as: UTF8.self) + "'"
    }

    mutating func document() throws(ConfigError) -> TOMLDocument {
        while i < bytes.count {
            skipSpaces()
            try skipComment()
            if newline() { continue }
            guard let b = peek() else { break }
            if b == UInt8(ascii: "[") {
                try header()
            } else {
                try keyValue()
            }
        }
        return TOMLDocument(tables: tables)
    }

    private mutating func header() throws(ConfigError) {
        let headerLine = line
        i += 1
        if peek() == UInt8(ascii: "[") {
            throw error("arrays of tables ([[...]]) are not supported; write each plan as [plan.NAME]")
        }
        var path: [String] = []
        while true {
            skipSpaces()
            path.append(try key(context: TOMLTable.dotted(path), what: "a table name"))
            skipSpaces()
            if peek() == UInt8(ascii: ".") { i += 1; continue }
            if peek() == UInt8(ascii: "]") { i += 1; break }
            throw error("expected '.' or ']' in the table header, found \(describeHere())", key: TOMLTable.dotted(path))
        }
        let name = TOMLTable.dotted(path)
        if let first = tableLines[path] {
            throw error("table [\(name)] is defined twice (first on line \(first))", key: name)
        }
        tableLines[path] = headerLine
        try endOfLine(key: name, after: "the table header")
        tables.append(TOMLTable(path: path, line: headerLine, entries: []))
    }

    /// A bare or quoted key.
    private mutating func key(context: String, what: String) throws(ConfigError) -> String {
        let contextKey = context.isEmpty ? nil : context
        guard let b = peek() else { throw error("expected \(what), found end of file", key: contextKey) }
        if b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") {
            let s = try string(key: contextKey)
            if s.isEmpty { throw error("an empty quoted key is not allowed", key: contextKey) }
            return s
        }
        let start = i
        while let c = peek(), isBareKeyByte(c) { i += 1 }
        guard i > start else {
            throw error("expected \(what) (letters, digits, '-' and '_', or a quoted name), found \(describeHere())",
                        key: contextKey)
        }
        return String(decoding: bytes[start..<i], as: UTF8.self)
    }

    private mutating func keyValue() throws(ConfigError) {
        let keyLine = line
        let table = tables.count - 1
        let k = try key(context: tables[table].name, what: "a key")
        let path = tables[table].keyPath(k)
        skipSpaces()
        if peek() == UInt8(ascii: ".") {
            throw error("dotted keys are not supported; put the key under a [table] header", key: path)
        }
        guard peek() == UInt8(ascii: "=") else {
            throw error("expected '=' after the key, found \(describeHere())", key: path)
        }
        i += 1
        skipSpaces()
        let v = try value(key: path)
        if let first = tables[table].entries.first(where: { $0.key == k }) {
            throw error("the key is set twice (first on line \(first.line))", key: path, line: keyLine)
        }
        try endOfLine(key: path)
        tables[table].entries.append(TOMLEntry(key: k, line: keyLine, value: v))
    }

    private mutating func value(key: String) throws(ConfigError) -> TOMLValue {
        guard let b = peek(), b != 0x0a, b != 0x0d else {
            throw error("expected a value after '='", key: key)
        }
        switch b {
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            return .string(try string(key: key))
        case UInt8(ascii: "["):
            return .stringArray(try array(key: key))
        case UInt8(ascii: "{"):
            throw error("inline tables ({...}) are not supported", key: key)
        default:
            break
        }
        // A bare token: a boolean or a number (or a mistake, such as a string without quotes).
        let start = i
        while let c = peek(), isBareKeyByte(c) || c == UInt8(ascii: "+") || c == UInt8(ascii: ".") || c == UInt8(ascii: ":") {
            i += 1
        }
        let token = String(decoding: bytes[start..<i], as: UTF8.self)
        if token == "true" { return .boolean(true) }
        if token == "false" { return .boolean(false) }
        if token.isEmpty {
            throw error("expected a value (a \"string\", an integer, true, false or a list of strings), found \(describeHere())",
                        key: key)
        }
        return .integer(try integer(token, key: key))
    }

    private func integer(_ token: String, key: String) throws(ConfigError) -> Int64 {
        var body = Substring(token)
        var negative = false
        if let s = body.first, s == "+" || s == "-" { negative = s == "-"; body = body.dropFirst() }
        let lower = body.lowercased()
        if body.isEmpty || !(body.first!.isASCII && body.first!.isNumber) {
            if ["inf", "nan"].contains(lower) { throw error("floats are not supported, got \(token)", key: key) }
            throw error("expected a value (a \"string\", an integer, true, false or a list of strings), got \(token); "
                        + "strings need quotes: \"\(token)\"", key: key)
        }
        if lower.hasPrefix("0x") || lower.hasPrefix("0o") || lower.hasPrefix("0b") {
            throw error("only decimal integers are supported, got \(token)", key: key)
        }
        if body.contains(":") || body.dropFirst().contains("-") {
            throw error("dates and times are not supported, got \(token); write them as a \"string\"", key: key)
        }
        if body.contains(".") || lower.contains("e") {
            throw error("floats are not supported, got \(token); write an integer or a \"string\" such as \"1.5s\"", key: key)
        }
        // Underscores only between digits, as TOML has it.
        let chars = Array(body)
        for (n, c) in chars.enumerated() {
            if c == "_" {
                guard n > 0, n < chars.count - 1, chars[n - 1].isNumber, chars[n + 1].isNumber else {
                    throw error("'_' in an integer must stand between digits, got \(token)", key: key)
                }
            } else if !(c.isASCII && c.isNumber) {
                throw error("expected an integer, got \(token); strings need quotes: \"\(token)\"", key: key)
            }
        }
        let digits = body.filter { $0 != "_" }
        if digits.count > 1 && digits.first == "0" {
            throw error("leading zeros are not allowed in integers, got \(token)", key: key)
        }
        guard let magnitude = UInt64(digits), magnitude <= (negative ? UInt64(Int64.max) + 1 : UInt64(Int64.max)) else {
            throw error("integer \(token) is out of range", key: key)
        }
        return negative ? Int64(truncatingIfNeeded: 0 &- magnitude) : Int64(magnitude)
    }

    /// A basic ("...") or literal ('...') string on one line.
    private mutating func string(key: String?) throws(ConfigError) -> String {
        let quote = bytes[i]
        if peek(1) == quote && peek(2) == quote {
            throw error("multi-line strings are not supported", key: key)
        }
        i += 1
        var out: [UInt8] = []
        while true {
            guard let b = peek(), b != 0x0a, !(b == 0x0d && peek(1) == 0x0a) else {
                throw error("unterminated string (a string ends on the line it starts)", key: key)
            }
            i += 1
            if b == quote { break }
            if (b < 0x20 && b != 0x09) || b == 0x7f {
                throw error("control character \(describe(b)) in a string; write it as an escape", key: key)
            }
            if b == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") {
                try escape(into: &out, key: key)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private mutating func escape(into out: inout [UInt8], key: String?) throws(ConfigError) {
        guard let e = peek() else { throw error("unterminated string", key: key) }
        i += 1
        switch e {
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "n"): out.append(0x0a)
        case UInt8(ascii: "f"): out.append(0x0c)
        case UInt8(ascii: "r"): out.append(0x0d)
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5c)
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let count = e == UInt8(ascii: "u") ? 4 : 8
            guard i + count <= bytes.count,
                  let v = UInt32(String(decoding: bytes[i..<(i + count)], as: UTF8.self), radix: 16),
                  let scalar = Unicode.Scalar(v) else {
                throw error("invalid escape \\\(Character(Unicode.Scalar(e))) (expected \(count) hex digits of a Unicode scalar)", key: key)
            }
            i += count
            out.append(contentsOf: Array(String(Character(scalar)).utf8))
        default:
            throw error("invalid escape \\\(Character(Unicode.Scalar(e))) in a string (\\\\ \\\" \\n \\t \\r \\b \\f \\uXXXX)", key: key)
        }
    }

    /// A list of strings, possibly across lines, with comments and a trailing comma.
    private mutating func array(key: String) throws(ConfigError) -> [String] {
        let opened = line
        i += 1
        var items: [String] = []
        func skipBlank(_ p: inout TOMLParser) throws(ConfigError) {
            while true {
                p.skipSpaces()
                try p.skipComment()
                if !p.newline() { return }
            }
        }
        while true {
            try skipBlank(&self)
            guard let b = peek() else { throw error("unterminated list (opened on line \(opened))", key: key) }
            if b == UInt8(ascii: "]") { i += 1; return items }
            guard b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") else {
                if b == UInt8(ascii: "[") || b == UInt8(ascii: "{") {
                    throw error("a list may hold only strings", key: key)
                }
                let start = i
                while let c = peek(), c != UInt8(ascii: ","), c != UInt8(ascii: "]"), c != 0x0a, c != 0x20, c != 0x0d { i += 1 }
                let token = String(decoding: bytes[start..<i], as: UTF8.self)
                if token.isEmpty { throw error("expected a string or ']' in the list, found \(describeHere())", key: key) }
                throw error("a list may hold only strings, found \(token)", key: key)
            }
            items.append(try string(key: key))
            try skipBlank(&self)
            if peek() == UInt8(ascii: ",") { i += 1; continue }
            if peek() == UInt8(ascii: "]") { i += 1; return items }
            if peek() == nil { throw error("unterminated list (opened on line \(opened))", key: key) }
            throw error("expected ',' or ']' in the list, found \(describeHere())", key: key)
        }
    }
}
