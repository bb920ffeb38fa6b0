/// Why a value could not be read; the caller adds the file, line and key.
public struct ValueError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A length of time as written in the configuration: a number and a unit
/// (`s`, `m`, `h`, `d`, `w`), or several of them (`1h30m`).
public struct TimeSpan: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let seconds: Int64
    /// The text as written, for messages and listings.
    public let text: String

    static let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]

    public init(seconds: Int64) {
        self.seconds = seconds
        text = TimeSpan.format(seconds)
    }

    public init(parsing raw: String) throws(ValueError) {
        let text = raw.trimmingSpaces
        let example = "a duration such as \"30s\", \"15m\", \"6h\", \"7d\" or \"1h30m\""
        guard !text.isEmpty else { throw ValueError("expected \(example), got an empty string") }
        var total: Int64 = 0
        var digits = ""
        var seen = Set<Character>()
        for c in text.lowercased() {
            if c.isASCII && c.isNumber {
                digits.append(c)
                continue
            }
            guard let unit = TimeSpan.units[c] else {
                if c == "." || c == "," {
                    throw ValueError("\(quoted(raw)): write whole numbers of smaller units instead of a fraction, e.g. \"1h30m\"")
                }
                if digits.isEmpty || c == " " {
                    throw ValueError("expected \(example), got \(quoted(raw))")
                }
                throw ValueError("unknown unit '\(c)' in \(quoted(raw)) (s, m, h, d or w)")
            }
            guard !digits.isEmpty else { throw ValueError("expected a number before '\(c)' in \(quoted(raw))") }
            guard !seen.contains(c) else { throw ValueError("the unit '\(c)' appears twice in \(quoted(raw))") }
            seen.insert(c)
            guard let n = Int64(digits) else { throw ValueError("\(quoted(raw)) is too long a time") }
            let (product, o1) = n.multipliedReportingOverflow(by: unit)
            let (sum, o2) = total.addingReportingOverflow(product)
            guard !o1, !o2, sum < Int64(1) << 40 else { throw ValueError("\(quoted(raw)) is too long a time") }
            total = sum
            digits = ""
        }
        guard digits.isEmpty else {
            throw ValueError("\(quoted(raw)) needs a unit after \(digits) (s, m, h, d or w), e.g. \"\(digits)s\"")
        }
        seconds = total
        self.text = text
    }

    public var description: String { text }

    /// Seconds written in the largest units that divide them: 90 → "1m30s".
    static func format(_ seconds: Int64) -> String {
        if seconds == 0 { return "0s" }
        var left = seconds
        var out = ""
        for (unit, size) in [("w", Int64(604_800)), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] where left >= size {
            out += "\(left / size)\(unit)"
            left %= size
        }
        return out
    }
}

/// A byte count: an integer, or a string with an optional binary suffix
/// (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`): "100M" = 100 MiB.
public enum ByteSize {
    public static func parse(_ raw: String) throws(ValueError) -> UInt64 {
        let s = raw.trimmingSpaces.uppercased()
        let digits = s.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let n = UInt64(digits) else {
            throw ValueError("expected a size such as \"0\", \"512K\", \"100M\" or \"1G\", got \(quoted(raw))")
        }
        var unit = String(s.dropFirst(digits.count)).trimmingSpaces
        if unit.hasSuffix("IB") { unit.removeLast(2) } else if unit.hasSuffix("B") && unit.count == 2 { unit.removeLast() }
        let shift: UInt64
        switch unit {
        case "": shift = 0
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        default: throw ValueError("unknown size suffix in \(quoted(raw)) (K, M, G or T)")
        }
        let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow, v <= UInt64(Int64.max) else { throw ValueError("\(quoted(raw)) is too large") }
        return v
    }
}

/// `HOST:PORT` of a listening socket (`[::1]:9469` for IPv6).
public struct ListenAddress: Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing raw: String) throws(ValueError) {
        let s = raw.trimmingSpaces
        let hostPart: Substring, portPart: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else {
                throw ValueError("expected \"[IPv6]:PORT\", got \(quoted(raw))")
            }
            hostPart = s[s.index(after: s.startIndex)..<close]
            portPart = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else {
                throw ValueError("expected \"HOST:PORT\" such as \"127.0.0.1:9469\", got \(quoted(raw))")
            }
            hostPart = s[..<colon]
            portPart = s[s.index(after: colon)...]
            if hostPart.contains(":") { throw ValueError("an IPv6 address needs brackets: \"[::1]:9469\", got \(quoted(raw))") }
        }
        guard !hostPart.isEmpty else { throw ValueError("the host is missing in \(quoted(raw)) (e.g. \"127.0.0.1:9469\")") }
        guard hostPart.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-_:%".contains($0)) }) else {
            throw ValueError("\(quoted(String(hostPart))) is not a host name or address")
        }
        guard let port = Int(portPart), (1...65535).contains(port) else {
            throw ValueError("the port in \(quoted(raw)) must be a number from 1 to 65535")
        }
        host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a typo
/// (edit distance at most 2, and less than half the word).
func suggestion(for word: String, among candidates: [String]) -> String? {
    var best: (String, Int)?
    for c in candidates {
        let w = word.lowercased(), l = c.lowercased()
        // "compress" for "compression", "speed" for "speed-limit": a clipped name.
        if w.count >= 4 && (l.hasPrefix(w) || w.hasPrefix(l)) && best == nil { best = (c, 3); continue }
        let d = editDistance(w, l)
        if d <= 2 && d * 2 < max(word.count, 2) + 1 && (best == nil || d < best!.1) { best = (c, d) }
    }
    return best?.0
}

/// Levenshtein distance, with an adjacent swap counting as one edit.
func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a), y = Array(b)
    if x.isEmpty { return y.count }
    if y.isEmpty { return x.count }
    var d = [[Int]](repeating: [Int](repeating: 0, count: y.count + 1), count: x.count + 1)
    for i in 0...x.count { d[i][0] = i }
    for j in 0...y.count { d[0][j] = j }
    for i in 1...x.count {
        for j in 1...y.count {
            let cost = x[i - 1] == y[j - 1] ? 0 : 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] {
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
            }
        }
    }
    return d[x.count][y.count]
}
