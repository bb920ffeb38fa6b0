@testable import Config
import Foundation
import Testing

/// Every way a configuration can be wrong gets one error that names the file,
/// the line and the key, and says why.
@Suite struct MalformedConfigTests {
    /// A plan that is valid on its own: lines 1–4.
    static let plan = """
        [plan.nightly]
        devices = ["/dev/sdb"]
        repository = "/srv/backup"
        schedule = "every 6h"

        """

    struct Case: CustomTestStringConvertible, Sendable {
        let text: String
        let line: Int
        /// nil: a syntax error that names no key.
        let key: String?
        let reason: String
        var testDescription: String { "\(key ?? "-"):\(line): \(reason)" }

        init(text: String, line: Int, key: String?, _ reason: String) {
            self.text = text
            self.line = line
            self.key = key
            self.reason = reason
        }
    }

    /// `plan` plus `extra` from line 5 on.
    static func planCase(_ extra: String, line: Int = 5, key: String, _ reason: String) -> Case {
        Case(text: plan + extra + "\n", line: line, key: key, reason)
    }

    static let planCases: [Case] = [
        planCase(#"keep-chains = "two""#, key: "plan.nightly.keep-chains", #"expected an integer ≥ 1, got "two""#),
        planCase("keep-chains = 0", key: "plan.nightly.keep-chains", "expected an integer ≥ 1, got 0"),
        planCase(#"lvm-snapshot = "yes""#, key: "plan.nightly.lvm-snapshot", #"expected true or false, got "yes""#),
        planCase("keep-incrementals = -1", key: "plan.nightly.keep-incrementals", "expected an integer ≥ 0, got -1"),
        planCase("keep-incrementals = true", key: "plan.nightly.keep-incrementals", "expected an integer ≥ 0, got true"),
        planCase("keep-chain = 2", key: "plan.nightly.keep-chain", "unknown key; did you mean 'keep-chains'?"),
        planCase(#"compress = "zstd""#, key: "plan.nightly.compress", "unknown key; did you mean 'compression'?"),
        planCase(#"shedule = "daily 02:00""#, key: "plan.nightly.shedule", "unknown key; did you mean 'schedule'?"),
        planCase(#"owner = "root""#, key: "plan.nightly.owner", "unknown key; the keys of [plan.NAME] are devices, repository"),
        planCase(#"format = "qcow""#, key: "plan.nightly.format", #"expected one of "qcow2", "raw", got "qcow"; did you mean "qcow2"?"#),
        planCase("format = 2", key: "plan.nightly.format", #"expected one of "qcow2", "raw", got 2"#),
        planCase(#"compression = "gzip""#, key: "plan.nightly.compression", #"expected one of "none", "zstd", got "gzip""#),
        planCase(#"consistency = "forzen""#, key: "plan.nightly.consistency", #"did you mean "frozen"?"#),
        planCase(#"speed-limit = "fast""#, key: "plan.nightly.speed-limit", #"expected a size such as "0", "512K", "100M" or "1G", got "fast""#),
        planCase(#"speed-limit = "10X""#, key: "plan.nightly.speed-limit", #"unknown size suffix in "10X""#),
        planCase("speed-limit = -5", key: "plan.nightly.speed-limit", "expected bytes per second"),
        planCase(#"new-chain-every = "7""#, key: "plan.nightly.new-chain-every", #"needs a unit after 7"#),
        planCase(#"new-chain-every = "30s""#, key: "plan.nightly.new-chain-every", #"must be at least 1m, got "30s""#),
        planCase(#"new-chain-every = "7 days""#, key: "plan.nightly.new-chain-every", "expected a duration"),
        planCase(#"new-chain-every = "1.5d""#, key: "plan.nightly.new-chain-every", "instead of a fraction, e.g. \"1h30m\""),
        planCase("new-chain-every = 7", key: "plan.nightly.new-chain-every", "expected a duration such as \"10s\""),
        planCase(#"bitmap = """#, key: "plan.nightly.bitmap", "a bitmap name has 1 to 1023 bytes, got 0"),
        planCase("bitmap = \"\(String(repeating: "b", count: 1024))\"", key: "plan.nightly.bitmap", "1 to 1023 bytes, got 1024"),
        planCase(#"format = "raw""# + "\ncompression = \"zstd\"", line: 6, key: "plan.nightly.compression",
                 #"compression needs format = "qcow2""#),
        planCase(#"format = "raw""# + "\nkeep-incrementals = 3", line: 6, key: "plan.nightly.keep-incrementals",
                 #"has no meaning with format = "raw""#),
        planCase(#"new-chain-every = "7d""# + "\nformat = \"raw\"", key: "plan.nightly.new-chain-every",
                 #"has no meaning with format = "raw""#),
        planCase(#"consistency = "converge""# + "\ncompression = \"zstd\"", line: 6, key: "plan.nightly.compression",
                 "cannot be combined with compression"),
        // TOML-level mistakes inside a plan.
        planCase("keep-chains = 2.5", key: "plan.nightly.keep-chains", "floats are not supported, got 2.5"),
        planCase("keep-chains = 07", key: "plan.nightly.keep-chains", "leading zeros are not allowed"),
        planCase("keep-chains = 0x10", key: "plan.nightly.keep-chains", "only decimal integers are supported"),
        planCase("keep-chains = 99999999999999999999", key: "plan.nightly.keep-chains", "out of range"),
        planCase("keep-chains = 1__0", key: "plan.nightly.keep-chains", "'_' in an integer must stand between digits"),
        planCase("keep-chains = 2 3", key: "plan.nightly.keep-chains", "unexpected '3' after the value"),
        planCase("keep-chains = 2 # two chains", key: "plan.nightly.keep-chains", "__valid__"),
        planCase("keep-chains =", key: "plan.nightly.keep-chains", "expected a value after '='"),
        planCase("keep-chains 2", key: "plan.nightly.keep-chains", "expected '=' after the key, found '2'"),
        planCase("keep.chains = 2", key: "plan.nightly.keep", "dotted keys are not supported"),
        planCase("started = 1979-05-27", key: "plan.nightly.started", "dates and times are not supported"),
        planCase("at = 07:32:00", key: "plan.nightly.at", "dates and times are not supported"),
        planCase("limits = { speed = 1 }", key: "plan.nightly.limits", "inline tables ({...}) are not supported"),
        planCase("note = \"\"\"many\nlines\"\"\"", key: "plan.nightly.note", "multi-line strings are not supported"),
        planCase(#"bitmap = "open"#, key: "plan.nightly.bitmap", "unterminated string"),
        planCase(#"bitmap = "a\qb""#, key: "plan.nightly.bitmap", #"invalid escape \q"#),
        planCase(#"bitmap = "\u12""#, key: "plan.nightly.bitmap", #"invalid escape \u"#),
        planCase("bitmap = \"tab\u{1}\"", key: "plan.nightly.bitmap", "control character 0x01 in a string"),
        planCase("bitmap = nightly", key: "plan.nightly.bitmap", #"strings need quotes: "nightly""#),
        planCase("repository = /srv", key: "plan.nightly.repository", "expected a value"),
        planCase("schedule = \"daily\"", key: "plan.nightly.schedule", "the key is set twice (first on line 4)"),
    ]

    static let deviceCases: [Case] = [
        Case(text: "[plan.a]\ndevices = []\n", line: 2, key: "plan.a.devices", "expected a list of block devices such as [\"/dev/sdb\", \"vg0/root\"], got an empty list"),
        Case(text: "[plan.a]\ndevices = \"/dev/sdb\"\n", line: 2, key: "plan.a.devices", #"got "/dev/sdb""#),
        Case(text: "[plan.a]\ndevices = [\"sdb\"]\n", line: 2, key: "plan.a.devices", #""sdb" is neither a device path ("/dev/sdb") nor a logical volume ("vg0/root")"#),
        Case(text: "[plan.a]\ndevices = [\"\"]\n", line: 2, key: "plan.a.devices", "a device name is empty"),
        Case(text: "[plan.a]\ndevices = [\"/dev/../etc/passwd\"]\n", line: 2, key: "plan.a.devices", "is not a device path"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\",\n  3]\n", line: 3, key: "plan.a.devices", "a list may hold only strings, found 3"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\" \"/dev/sdc\"]\n", line: 2, key: "plan.a.devices", "expected ',' or ']' in the list"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\",\n", line: 3, key: "plan.a.devices", "unterminated list (opened on line 2)"),
        Case(text: "[plan.a]\ndevices = [\"/dev/vg0/root\", \"vg0/root\"]\n", line: 2, key: "plan.a.devices",
             #""/dev/vg0/root" and "vg0/root" would share the device folder 'vg0-root'"#),
        Case(text: "[plan.a]\ndevices = [[\"/dev/sdb\"]]\n", line: 2, key: "plan.a.devices", "a list may hold only strings"),
        Case(text: "[plan.a]\ndevices = [ , ]\n", line: 2, key: "plan.a.devices", "expected a string or ']' in the list, found ','"),
    ]

    static let tableCases: [Case] = [
        Case(text: "[deamon]\nhooks-dir = \"/x\"\n", line: 1, key: "deamon", "unknown table; did you mean [daemon]?"),
        Case(text: "[plans.nightly]\n", line: 1, key: "plans.nightly", "unknown table; did you mean [plan.nightly]?"),
        Case(text: "[backups]\n", line: 1, key: "backups", "unknown table; the tables are [daemon], [metrics] and [plan.NAME]"),
        Case(text: "[plan.a.retention]\n", line: 1, key: "plan.a.retention", "a plan is one table, [plan.NAME], with no tables inside it"),
        Case(text: "[plan]\ndevices = [\"/dev/sdb\"]\n", line: 2, key: "plan.devices", "each plan is a table of its own"),
        Case(text: "# comment\ndevices = [\"/dev/sdb\"]\n", line: 2, key: "devices", "keys go under a table: [daemon], [metrics] or [plan.NAME]"),
        Case(text: "[plan.\"my plan\"]\n", line: 1, key: "plan.\"my plan\"", "a plan's name may hold only letters, digits, '-' and '_'"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\"]\n\n[plan.a]\n", line: 4, key: "plan.a", "table [plan.a] is defined twice (first on line 1)"),
        Case(text: "[[plan]]\n", line: 1, key: nil, "arrays of tables ([[...]]) are not supported"),
        Case(text: "[plan.a\n", line: 1, key: "plan.a", "expected '.' or ']' in the table header"),
        Case(text: "[]\n", line: 1, key: nil, "expected a table name"),
        Case(text: "[daemon] x\n", line: 1, key: "daemon", "unexpected 'x'"),
        Case(text: "[plan.a]\nrepository = \"/srv\"\nschedule = \"daily\"\n", line: 1, key: "plan.a",
             "missing required key 'devices' (the devices to back up"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\"]\nschedule = \"daily\"\n", line: 1, key: "plan.a",
             "missing required key 'repository'"),
        Case(text: "[plan.a]\ndevices = [\"/dev/sdb\"]\nrepository = \"/srv\"\n", line: 1, key: "plan.a",
             "missing required key 'schedule'"),
        Case(text: "[plan.a]\nrepository = \"backup\"\n", line: 2, key: "plan.a.repository",
             #"expected the repository folder as an absolute path (starting with /), got "backup""#),
        Case(text: "[plan.a]\nrepository = \"/\"\n", line: 2, key: "plan.a.repository", "a folder of its own, not /"),
        Case(text: "[plan.a]\nrepository = \"/srv/../etc\"\n", line: 2, key: "plan.a.repository", "must not contain . or .. segments"),
    ]

    static let scheduleCases: [Case] = [
        ("every 6x", "unknown unit 'x' in \"6x\" (s, m, h, d or w)"),
        ("every", #"expected "every" and one duration"#),
        ("every 0s", "must be at least 1s"),
        ("every h", "expected a number before 'h'"),
        ("every 1h1h", "the unit 'h' appears twice"),
        ("daily 25:00", #"the hour "25" must be a number from 0 to 23 or *"#),
        ("daily 02:60", #"the minute "60" must be a number from 0 to 59"#),
        ("daily 2.30", #"cannot read "2.30" in the schedule"#),
        ("Fri..Mon 01:00", "the range Fri..Mon runs backwards"),
        ("Mon..Fry 01:00", #"unknown weekday "Fry""#),
        ("*-02-30 00:00", "names a day that none of its months has"),
        ("*-04-31 00:00", "names a day that none of its months has"),
        ("*-13-01 00:00", #"the month "13" must be a number from 1 to 12"#),
        ("*-*-0 00:00", #"the day "0" must be a number from 1 to 31"#),
        ("*-*-* 02:30 03:30", "has two times"),
        ("02:30 Mon", "the weekdays go first"),
        ("*-*-*", "needs a time of day"),
        ("sometimes", #"cannot read "sometimes" as a schedule"#),
        ("Mon..Fri", "needs a time of day such as 02:30"),
        ("", "expected a schedule such as"),
        ("hourly 02:00", "'hourly' takes nothing after it"),
        ("*-*-* */0:00", "the step in \"*/0\" must be a whole number of at least 1"),
        ("*-*-* 10..2:00", "the hour range 10..2 runs backwards"),
        ("1-2-3-4 00:00", "expected the date as YEAR-MONTH-DAY or MONTH-DAY"),
        ("*-*-* 1:2:3:4", "expected the time as HH:MM or HH:MM:SS"),
    ].map { Case(text: plan.replacingOccurrences(of: "\"every 6h\"", with: quoted($0.0)), line: 4,
                 key: "plan.nightly.schedule", $0.1) }

    static let otherTableCases: [Case] = [
        Case(text: "[daemon]\nfreeze-timeout = 10\n", line: 2, key: "daemon.freeze-timeout",
             #"expected a duration such as "10s", "15m", "6h" or "7d", got 10"#),
        Case(text: "[daemon]\nfreeze-timeout = \"0s\"\n", line: 2, key: "daemon.freeze-timeout", "must be at least 1s"),
        Case(text: "[daemon]\nhooks-dir = \"hooks.d\"\n", line: 2, key: "daemon.hooks-dir", "absolute path"),
        Case(text: "[daemon]\nhook-timout = \"60s\"\n", line: 2, key: "daemon.hook-timout", "did you mean 'hook-timeout'?"),
        Case(text: "[daemon]\ngroup = \"\"\n", line: 2, key: "daemon.group", "expected a group name"),
        Case(text: "[metrics]\nlisten = \"localhost\"\n", line: 2, key: "metrics.listen", #"expected "HOST:PORT" such as "127.0.0.1:9469""#),
        Case(text: "[metrics]\nlisten = \"127.0.0.1:99999\"\n", line: 2, key: "metrics.listen", "must be a number from 1 to 65535"),
        Case(text: "[metrics]\nlisten = \"::1:9469\"\n", line: 2, key: "metrics.listen", "an IPv6 address needs brackets"),
        Case(text: "[metrics]\nlisten = 9469\n", line: 2, key: "metrics.listen", "got 9469"),
        Case(text: "[metrics]\ntextfile = \"/var/lib/node-exporter/ringback.txt\"\n", line: 2, key: "metrics.textfile",
             "reads only files named *.prom"),
        Case(text: "[metrics]\nport = 9469\n", line: 2, key: "metrics.port", "unknown key; the keys of [metrics] are listen, textfile"),
    ]

    static let acrossPlans: [Case] = [
        Case(text: plan + "\n[plan.weekly]\nrepository = \"/srv/backup\"\ndevices = [\"/dev/sdb\"]\nschedule = \"weekly\"\n",
             line: 8, key: "plan.weekly.devices",
             "\"/dev/sdb\" is also backed up by plan 'nightly' into /srv/backup/sdb; two plans cannot share a device folder"),
        Case(text: plan + "bitmap = \"b\"\n\n[plan.weekly]\nrepository = \"/srv/weekly\"\ndevices = [\"/dev/sdb\"]\nschedule = \"weekly\"\nbitmap = \"b\"\n",
             line: 11, key: "plan.weekly.bitmap", "plan 'nightly' already keeps the bitmap 'b' on /dev/sdb; each plan needs its own"),
    ]

    /// The file is refused with a problem at the case's line and key, whose
    /// message starts "ringback.toml:LINE: KEY: " and gives the reason.
    func check(_ c: Case) {
        let problems: [ConfigError.Problem]
        do {
            _ = try RingbackConfig.parse(c.text, file: "ringback.toml")
            #expect(c.reason == "__valid__", "accepted:\n\(c.text)")
            return
        } catch {
            problems = error.problems
        }
        #expect(c.reason != "__valid__", "refused: \(problems)")
        let prefix = "ringback.toml:\(c.line): " + (c.key.map { "\($0): " } ?? "")
        let p = problems.first { $0.description.hasPrefix(prefix) && $0.reason.contains(c.reason) }
        #expect(p != nil, "no problem starts with \(prefix) and says \(c.reason): \(problems.map(\.description))")
        #expect(problems.allSatisfy { $0.description.hasPrefix("ringback.toml:\($0.line): ") })
    }

    @Test(arguments: planCases) func planKeys(_ c: Case) { check(c) }
    @Test(arguments: deviceCases) func devices(_ c: Case) { check(c) }
    @Test(arguments: tableCases) func tables(_ c: Case) { check(c) }
    @Test(arguments: scheduleCases) func schedules(_ c: Case) { check(c) }
    @Test(arguments: otherTableCases) func daemonAndMetrics(_ c: Case) { check(c) }
    @Test(arguments: acrossPlans) func twoPlans(_ c: Case) { check(c) }

    @Test("the contract's example message, word for word")
    func contractMessage() throws {
        let text = Self.plan + "keep-incrementals = 7\nbitmap = \"x\"\nformat = \"qcow2\"\ncompression = \"none\"\n"
            + "consistency = \"none\"\nspeed-limit = \"0\"\nnew-chain-every = \"7d\"\nkeep-chains = \"two\"\n"
        let e = try #require(throws: ConfigError.self) { try RingbackConfig.parse(text, file: "ringback.toml") }
        #expect(e.description == #"ringback.toml:12: plan.nightly.keep-chains: expected an integer ≥ 1, got "two""#)
    }

    @Test("every problem of a file is reported, in the order of its lines")
    func allProblems() throws {
        let text = """
            [metrics]
            listen = "nowhere"

            [plan.a]
            devices = []
            repository = "relative"
            schedule = "every 6x"
            keep-chains = 0
            colour = "blue"

            [plan.b]
            devices = ["/dev/sdc"]

            """
        let e = try #require(throws: ConfigError.self) { try RingbackConfig.parse(text, file: "/etc/ringback/ringback.toml") }
        #expect(e.problems.map(\.line) == [2, 5, 6, 7, 8, 9, 11, 11])
        #expect(e.problems.map { $0.key ?? "" } == ["metrics.listen", "plan.a.devices", "plan.a.repository", "plan.a.schedule",
                                                    "plan.a.keep-chains", "plan.a.colour", "plan.b", "plan.b"])
        #expect(e.description.split(separator: "\n").allSatisfy { $0.hasPrefix("/etc/ringback/ringback.toml:") })
    }

    @Test("bytes that are not UTF-8 are named by their line")
    func notUTF8() throws {
        let bytes = Array("[plan.a]\ndevices = [\"/dev/sdb\"]\n".utf8) + [0x23, 0xff, 0xfe, 0x0a]
        let e = try #require(throws: ConfigError.self) { try RingbackConfig.parse(bytes: bytes, file: "f.toml") }
        #expect(e.description == "f.toml:3: the line is not valid UTF-8")
    }

    @Test("a missing file and an unreadable one are told apart")
    func missingFile() throws {
        let e = try #require(throws: ConfigFileError.self) { try RingbackConfig.load(path: "/nonexistent/ringback.toml") }
        #expect(e.missing)
        #expect(e.description == "cannot read the config file /nonexistent/ringback.toml: No such file or directory")
        let dir = try #require(throws: ConfigFileError.self) { try RingbackConfig.load(path: "/") }
        #expect(!dir.missing && dir.description == "cannot read the config file /: it is a folder, not a file")
        let notDir = try #require(throws: ConfigFileError.self) { try RingbackConfig.load(path: "/etc/passwd/x.toml") }
        #expect(!notDir.missing && notDir.reason == "Not a directory")
    }
}
