/// What is wrong with a configuration file: one or more problems, each naming
/// the file, the line and the key, e.g.
/// `ringback.toml:14: plan.nightly.keep-chains: expected an integer ≥ 1, got "two"`.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    /// One problem at one place of the file.
    public struct Problem: Equatable, Sendable, CustomStringConvertible {
        /// The file as it was named to the loader.
        public let file: String
        /// 1-based line number.
        public let line: Int
        /// The dotted key (`plan.nightly.keep-chains`), the table (`plan.nightly`),
        /// or nil for a syntax error that names no key.
        public let key: String?
        public let reason: String

        public init(file: String, line: Int, key: String?, reason: String) {
            self.file = file
            self.line = line
            self.key = key
            self.reason = reason
        }

        public var description: String {
            if let key { return "\(file):\(line): \(key): \(reason)" }
            return "\(file):\(line): \(reason)"
        }
    }

    /// In the order of the file (a syntax error stops reading, so it is the last).
    public let problems: [Problem]

    public init(_ problems: [Problem]) {
        precondition(!problems.isEmpty, "a ConfigError needs a problem")
        self.problems = problems
    }

    public init(file: String, line: Int, key: String?, reason: String) {
        self.init([Problem(file: file, line: line, key: key, reason: reason)])
    }

    /// Every problem on a line of its own.
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// A file that could not be read at all (missing, unreadable, not UTF-8).
public struct ConfigFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let reason: String
    /// The file does not exist (ENOENT): the default path may be absent.
    public let missing: Bool

    public init(file: String, reason: String, missing: Bool) {
        self.file = file
        self.reason = reason
        self.missing = missing
    }

    public var description: String { "cannot read the config file \(file): \(reason)" }
}
