import Foundation

/// ringback's configuration file (`/etc/ringback/ringback.toml`), typed and
/// checked: every key known, every value in range, every problem named by
/// file, line and key.
public struct RingbackConfig: Equatable, Sendable {
    /// `[daemon]`: settings that command-line flags override.
    public struct DaemonSettings: Equatable, Sendable {
        public var hooksDir: String?
        public var hookTimeout: TimeSpan?
        public var freezeTimeout: TimeSpan?
        public var group: String?
        public init() {}
    }

    /// `[metrics]`: where the Prometheus metrics go; nothing set is no metrics.
    public struct MetricsSettings: Equatable, Sendable {
        /// HTTP listener; nil (absent or "") is off.
        public var listen: ListenAddress?
        /// A node-exporter textfile (`*.prom`); nil is off.
        public var textfile: String?
        public init() {}
    }

    public static let defaultPath = "/etc/ringback/ringback.toml"

    /// The file this was read from.
    public var file: String
    public var daemon = DaemonSettings()
    public var metrics = MetricsSettings()
    /// In the order of the file.
    public var plans: [BackupPlan] = []

    public init(file: String) { self.file = file }

    public func plan(named name: String) -> BackupPlan? { plans.first { $0.name == name } }

    /// Reads and checks the file at `path`. Throws `ConfigFileError` when it
    /// cannot be read and `ConfigError` when it is wrong.
    public static func load(path: String) throws -> RingbackConfig {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw ConfigFileError(file: path, reason: String(cString: strerror(e)), missing: e == ENOENT)
        }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        var st = stat()
        if fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR {
            throw ConfigFileError(file: path, reason: "it is a folder, not a file", missing: false)
        }
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw ConfigFileError(file: path, reason: "\(error.localizedDescription)", missing: false)
        }
        return try parse(bytes: Array(data), file: path)
    }

    /// Checks a configuration given as text; `file` names it in errors.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> RingbackConfig {
        try parse(bytes: Array(text.utf8), file: file)
    }

    static func parse(bytes: [UInt8], file: String) throws(ConfigError) -> RingbackConfig {
        let document = try TOMLDocument.parse(bytes: bytes, file: file)
        var checker = ConfigChecker(file: file)
        let config = checker.check(document)
        if !checker.problems.isEmpty { throw ConfigError(checker.problems) }
        return config
    }
}

/// Reads the tables of a parsed file into a `RingbackConfig`, collecting
/// every problem it finds in file order.
struct ConfigChecker {
    let file: String
    var problems: [ConfigError.Problem] = []

    static let planKeys = ["devices", "repository", "schedule", "bitmap", "format", "compression", "consistency",
                           "speed-limit", "keep-incrementals", "new-chain-every", "keep-chains", "lvm-snapshot"]
    static let daemonKeys = ["hooks-dir", "hook-timeout", "freeze-timeout", "group"]
    static let metricsKeys = ["listen", "textfile"]

    mutating func fail(_ line: Int, _ key: String?, _ reason: String) {
        problems.append(ConfigError.Problem(file: file, line: line, key: key, reason: reason))
    }

    mutating func check(_ document: TOMLDocument) -> RingbackConfig {
        var config = RingbackConfig(file: file)
        for table in document.tables {
            switch table.path.count == 2 && table.path[0] == "plan" ? ["plan", "*"] : table.path {
            case []:
                for e in table.entries {
                    fail(e.line, e.key, "keys go under a table: [daemon], [metrics] or [plan.NAME]")
                }
            case ["daemon"]:
                config.daemon = daemonSettings(table)
            case ["metrics"]:
                config.metrics = metricsSettings(table)
            case ["plan"]:
                for e in table.entries {
                    fail(e.line, table.keyPath(e.key), "each plan is a table of its own: write [plan.NAME] above its keys")
                }
            case ["plan", "*"]:
                if let plan = plan(table) { config.plans.append(plan) }
            default:
                unknownTable(table)
            }
        }
        checkAcrossPlans(config.plans, document)
        // File order; problems of one line keep the order they were found in.
        problems = problems.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(\.element)
        return config
    }

    private mutating func unknownTable(_ table: TOMLTable) {
        var hint = "the tables are [daemon], [metrics] and [plan.NAME]"
        if table.path.count == 1, let s = suggestion(for: table.path[0], among: ["daemon", "metrics", "plan"]) {
            hint = "did you mean [\(s)\(s == "plan" ? ".NAME" : "")]?"
        } else if table.path.count == 2, suggestion(for: table.path[0], among: ["plan"]) != nil {
            hint = "did you mean [\(TOMLTable.dotted(["plan", table.path[1]]))]?"
        } else if table.path.first == "plan" {
            hint = "a plan is one table, [plan.NAME], with no tables inside it"
        }
        fail(table.line, table.name, "unknown table; \(hint)")
    }

    /// "unknown key" with the nearest known key, or the list of known keys.
    private mutating func unknownKey(_ e: TOMLEntry, in table: TOMLTable, known: [String]) {
        if let s = suggestion(for: e.key, among: known) {
            fail(e.line, table.keyPath(e.key), "unknown key; did you mean '\(s)'?")
        } else {
            fail(e.line, table.keyPath(e.key), "unknown key; the keys of [\(table.path.count == 2 ? "plan.NAME" : table.name)] are "
                 + known.joined(separator: ", "))
        }
    }

    // MARK: typed values

    private mutating func string(_ e: TOMLEntry, _ path: String, _ expected: String) -> String? {
        if case .string(let s) = e.value { return s }
        fail(e.line, path, "expected \(expected), got \(e.value.written)")
        return nil
    }

    private mutating func duration(_ e: TOMLEntry, _ path: String, minimum: Int64 = 1) -> TimeSpan? {
        guard let s = string(e, path, "a duration such as \"10s\", \"15m\", \"6h\" or \"7d\"") else { return nil }
        do {
            let span = try TimeSpan(parsing: s)
            guard span.seconds >= minimum else {
                fail(e.line, path, "must be at least \(TimeSpan(seconds: minimum).text), got \(e.value.written)")
                return nil
            }
            return span
        } catch {
            fail(e.line, path, error.message)
            return nil
        }
    }

    private mutating func integer(_ e: TOMLEntry, _ path: String, atLeast minimum: Int64) -> Int? {
        guard case .integer(let i) = e.value, i >= minimum, i <= Int64(Int32.max) else {
            fail(e.line, path, "expected an integer ≥ \(minimum), got \(e.value.written)")
            return nil
        }
        return Int(i)
    }

    private mutating func choice<E: RawRepresentable & CaseIterable>(_ e: TOMLEntry, _ path: String, _ type: E.Type) -> E?
        where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        let list = names.map { "\"\($0)\"" }.joined(separator: ", ")
        guard case .string(let s) = e.value else {
            fail(e.line, path, "expected one of \(list), got \(e.value.written)")
            return nil
        }
        guard let v = E(rawValue: s) else {
            let hint = suggestion(for: s, among: names).map { "; did you mean \"\($0)\"?" } ?? ""
            fail(e.line, path, "expected one of \(list), got \(e.value.written)\(hint)")
            return nil
        }
        return v
    }

    /// An absolute path without `.`/`..` segments, trailing slashes removed.
    private mutating func absolutePath(_ e: TOMLEntry, _ path: String, what: String) -> String? {
        guard let s = string(e, path, "\(what) as an absolute path in quotes") else { return nil }
        guard s.hasPrefix("/") else {
            fail(e.line, path, "expected \(what) as an absolute path (starting with /), got \(e.value.written)")
            return nil
        }
        let segments = s.split(separator: "/")
        guard !segments.contains(where: { $0 == "." || $0 == ".." }) else {
            fail(e.line, path, "\(e.value.written) must not contain . or .. segments")
            return nil
        }
        return "/" + segments.joined(separator: "/")
    }

    // MARK: tables

    private mutating func daemonSettings(_ table: TOMLTable) -> RingbackConfig.DaemonSettings {
        var d = RingbackConfig.DaemonSettings()
        for e in table.entries {
            let path = table.keyPath(e.key)
            switch e.key {
            case "hooks-dir": d.hooksDir = absolutePath(e, path, what: "the hooks folder")
            case "hook-timeout": d.hookTimeout = duration(e, path)
            case "freeze-timeout": d.freezeTimeout = duration(e, path)
            case "group":
                if let g = string(e, path, "a group name in quotes") {
                    if g.isEmpty || g.contains(where: { $0 == " " || $0 == ":" || $0 == "/" }) {
                        fail(e.line, path, "expected a group name, got \(e.value.written)")
                    } else {
                        d.group = g
                    }
                }
            default: unknownKey(e, in: table, known: Self.daemonKeys)
            }
        }
        return d
    }

    private mutating func metricsSettings(_ table: TOMLTable) -> RingbackConfig.MetricsSettings {
        var m = RingbackConfig.MetricsSettings()
        for e in table.entries {
            let path = table.keyPath(e.key)
            switch e.key {
            case "listen":
                guard let s = string(e, path, "\"HOST:PORT\" such as \"127.0.0.1:9469\", or \"\" for none") else { continue }
                if s.isEmpty { continue }
                do { m.listen = try ListenAddress(parsing: s) } catch { fail(e.line, path, error.message) }
            case "textfile":
                guard case .string(let s) = e.value else {
                    fail(e.line, path, "expected the path of a .prom file in quotes, or \"\" for none, got \(e.value.written)")
                    continue
                }
                if s.isEmpty { continue }
                guard let p = absolutePath(e, path, what: "the textfile") else { continue }
                guard p.hasSuffix(".prom") else {
                    fail(e.line, path, "node-exporter's textfile collector reads only files named *.prom, got \(quoted(s))")
                    continue
                }
                m.textfile = p
            default: unknownKey(e, in: table, known: Self.metricsKeys)
            }
        }
        return m
    }

    private mutating func plan(_ table: TOMLTable) -> BackupPlan? {
        let name = table.path[1]
        let planPath = table.name
        let before = problems.count
        if !isBareKey(name) || name.count > 64 {
            fail(table.line, planPath, "a plan's name may hold only letters, digits, '-' and '_' (at most 64), got \(quoted(name))")
        }
        var devices: [BackupPlan.Device]?
        var repository: String?
        var schedule: Schedule?
        var bitmap: String?
        var format = BackupPlan.Format.qcow2
        var compression = BackupPlan.Compression.none
        var consistency = BackupPlan.Consistency.none
        var speed: UInt64 = 0
        var keepIncrementals: Int?, keepChains: Int?
        var newChainEvery: TimeSpan?
        var lvmSnapshot = false
        var lines: [String: Int] = [:]
        for e in table.entries {
            let path = table.keyPath(e.key)
            lines[e.key] = e.line
            switch e.key {
            case "devices":
                devices = planDevices(e, path)
            case "repository":
                if let p = absolutePath(e, path, what: "the repository folder") {
                    if p == "/" { fail(e.line, path, "the repository must be a folder of its own, not /") } else { repository = p }
                }
            case "schedule":
                guard let s = string(e, path, "a schedule such as \"every 6h\" or \"daily 02:30\"") else { continue }
                do { schedule = try Schedule(parsing: s) } catch { fail(e.line, path, error.message) }
            case "bitmap":
                guard let s = string(e, path, "a bitmap name in quotes") else { continue }
                if s.isEmpty || s.utf8.count > 1023 {
                    fail(e.line, path, "a bitmap name has 1 to 1023 bytes, got \(s.utf8.count)")
                } else {
                    bitmap = s
                }
            case "format": format = choice(e, path, BackupPlan.Format.self) ?? format
            case "compression": compression = choice(e, path, BackupPlan.Compression.self) ?? compression
            case "consistency": consistency = choice(e, path, BackupPlan.Consistency.self) ?? consistency
            case "speed-limit":
                switch e.value {
                case .integer(let i) where i >= 0: speed = UInt64(i)
                case .string(let s):
                    do { speed = try ByteSize.parse(s) } catch { fail(e.line, path, "\(error.message) (bytes per second)") }
                default: fail(e.line, path, "expected bytes per second such as \"100M\" (0 = no limit), got \(e.value.written)")
                }
            case "keep-incrementals": keepIncrementals = integer(e, path, atLeast: 0)
            case "keep-chains": keepChains = integer(e, path, atLeast: 1)
            case "new-chain-every": newChainEvery = duration(e, path, minimum: 60)
            case "lvm-snapshot":
                guard case .boolean(let b) = e.value else {
                    fail(e.line, path, "expected true or false, got \(e.value.written)")
                    continue
                }
                lvmSnapshot = b
            default: unknownKey(e, in: table, known: Self.planKeys)
            }
        }
        for (key, what) in [("devices", "the devices to back up, e.g. [\"/dev/sdb\"]"),
                            ("repository", "the folder the chains go into"),
                            ("schedule", "when the plan runs, e.g. \"daily 02:30\"")] where lines[key] == nil {
            fail(table.line, planPath, "missing required key '\(key)' (\(what))")
        }
        // Combinations that the backup would refuse, named at the key that conflicts.
        if format == .raw {
            if compression != .none, let l = lines["compression"] {
                fail(l, table.keyPath("compression"), "compression needs format = \"qcow2\" (raw images are not compressed)")
            }
            for key in ["keep-incrementals", "new-chain-every"] {
                if let l = lines[key] {
                    fail(l, table.keyPath(key), "has no meaning with format = \"raw\": every raw backup is a full one in a chain of its own")
                }
            }
        }
        if consistency == .converge && compression != .none, let l = lines["compression"] {
            fail(l, table.keyPath("compression"), "consistency = \"converge\" rewrites clusters between passes and cannot be combined with compression")
        }
        guard problems.count == before, let devices, let repository, let schedule else { return nil }
        return BackupPlan(name: name, devices: devices, repository: repository, schedule: schedule, bitmap: bitmap,
                          format: format, compression: compression, consistency: consistency, speedLimit: speed,
                          keepIncrementals: keepIncrementals, newChainEvery: newChainEvery, keepChains: keepChains,
                          lvmSnapshot: lvmSnapshot, line: table.line)
    }

    private mutating func planDevices(_ e: TOMLEntry, _ path: String) -> [BackupPlan.Device]? {
        let example = "a list of block devices such as [\"/dev/sdb\", \"vg0/root\"]"
        guard case .stringArray(let names) = e.value else {
            fail(e.line, path, "expected \(example), got \(e.value.written)")
            return nil
        }
        guard !names.isEmpty else {
            fail(e.line, path, "expected \(example), got an empty list")
            return nil
        }
        var out: [BackupPlan.Device] = []
        for name in names {
            let segments = name.split(separator: "/", omittingEmptySubsequences: false)
            if name.hasPrefix("/") {
                guard name.count > 1, !segments.dropFirst().contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
                    fail(e.line, path, "\(quoted(name)) is not a device path such as \"/dev/sdb\"")
                    return nil
                }
            } else {
                let lvmName: (Substring) -> Bool = { s in
                    !s.isEmpty && s != "." && s != ".." && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+_.-".contains($0)) }
                }
                guard segments.count == 2, lvmName(segments[0]), lvmName(segments[1]) else {
                    fail(e.line, path, name.isEmpty ? "a device name is empty"
                         : "\(quoted(name)) is neither a device path (\"/dev/sdb\") nor a logical volume (\"vg0/root\")")
                    return nil
                }
            }
            let device = BackupPlan.Device(name: name, path: BackupPlan.devicePath(for: name), id: BackupPlan.deviceID(for: name))
            if let other = out.first(where: { $0.id == device.id }) {
                fail(e.line, path, "\(quoted(other.name)) and \(quoted(name)) would share the device folder '\(device.id)'")
                return nil
            }
            out.append(device)
        }
        return out
    }

    /// Two plans must not write into the same device folder, nor keep the
    /// same bitmap on the same device.
    private mutating func checkAcrossPlans(_ plans: [BackupPlan], _ document: TOMLDocument) {
        func line(_ plan: BackupPlan, _ key: String) -> Int {
            document.tables.first { $0.path == ["plan", plan.name] }?.entries.first { $0.key == key }?.line ?? plan.line
        }
        for (i, plan) in plans.enumerated() {
            for earlier in plans[..<i] {
                for device in plan.devices {
                    if earlier.repository == plan.repository, earlier.devices.contains(where: { $0.id == device.id }) {
                        fail(line(plan, "devices"), "plan.\(plan.name).devices",
                             "\(quoted(device.name)) is also backed up by plan '\(earlier.name)' into \(plan.repository)/\(device.id); "
                             + "two plans cannot share a device folder (give them different repositories)")
                    }
                    if earlier.bitmap == plan.bitmap, earlier.devices.contains(where: { $0.path == device.path }) {
                        fail(line(plan, "bitmap"), "plan.\(plan.name).bitmap",
                             "plan '\(earlier.name)' already keeps the bitmap '\(plan.bitmap)' on \(device.path); each plan needs its own")
                    }
                }
            }
        }
    }
}
