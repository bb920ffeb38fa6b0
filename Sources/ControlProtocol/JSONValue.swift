import Foundation

/// Any JSON value: the arguments and results of QMP commands, which are
/// free-form objects on the wire.
public enum JSONValue: Codable, Equatable, Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d == d.rounded() && abs(d) < 9e18: return Int64(d)
        default: return nil
        }
    }
    /// A number as a Double, whether it was written as an integer or not.
    public var doubleValue: Double? {
        switch self {
        case .double(let d): return d
        case .int(let i): return Double(i)
        default: return nil
        }
    }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o }; return nil }

    /// Compact JSON text with sorted keys.
    public var description: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: e.encode(self), as: UTF8.self)) ?? "null"
    }

    /// Converts an Encodable value (a summary struct) into a JSONValue.
    public static func from<T: Encodable>(_ value: T) throws -> JSONValue {
        let data = try JSONEncoder().encode(value)
        return try JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Parses JSON text.
    public static func parse(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }
}

/// Splits a byte stream into top-level JSON objects, as QMP peers send them
/// (with or without newlines between). Tracks strings and escapes so braces
/// inside strings do not count.
public struct JSONStreamSplitter: Sendable {
    private var buffer: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var start: Int?
    /// The largest object accepted; a client that sends more is cut off.
    public let limit: Int

    public init(limit: Int = 1 << 20) { self.limit = limit }

    public enum SplitError: Error, Equatable { case tooLarge(Int), unexpected(UInt8) }

    /// Feeds bytes; returns the complete objects they finish.
    public mutating func feed(_ bytes: some Sequence<UInt8>) throws(SplitError) -> [Data] {
        let (objects, failure) = split(bytes)
        if let failure { throw failure }
        return objects
    }

    /// Feeds bytes; returns the complete objects they finish and, when the
    /// stream breaks the framing, the error found after them. The objects come
    /// first because a peer that wrote several messages in one go is owed an
    /// answer to each complete one before the stream is given up.
    public mutating func split(_ bytes: some Sequence<UInt8>) -> (objects: [Data], failure: SplitError?) {
        var out: [Data] = []
        for byte in bytes {
            if start == nil {
                switch byte {
                case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): continue
                case UInt8(ascii: "{"): start = 0; buffer = []
                default: return (out, .unexpected(byte))
                }
            }
            buffer.append(byte)
            if buffer.count > limit { return (out, .tooLarge(limit)) }
            if inString {
                if escaped { escaped = false }
                else if byte == UInt8(ascii: "\\") { escaped = true }
                else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
                if depth == 0 {
                    out.append(Data(buffer))
                    buffer = []
                    start = nil
                }
            default: break
            }
        }
        return (out, nil)
    }
}
