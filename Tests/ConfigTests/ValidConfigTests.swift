@testable import Config
import Foundation
import PropertyBased
import Testing

/// Valid configurations read into the typed settings; the shipped default and
/// the README's example are checked here too, so the documentation cannot drift.
@Suite struct ValidConfigTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test("every key of every table, typed")
    func everyKey() throws {
        let text = """
            # ringback configuration
            [daemon]
            hooks-dir = "/etc/ringback/hooks.d/"   # trailing slash dropped
            hook-timeout = "1m30s"
            freeze-timeout = "10s"
            group = "backup"

            [metrics]
            listen = "127.0.0.1:9469"
            textfile = "/var/lib/prometheus/node-exporter/ringback.prom"

            [plan.nightly]
            devices = [
                "/dev/sdb",        # a disk
                'vg0/root',        # an LV, as a literal string
                "/dev/mapper/vg0-home",
            ]
            repository = "/srv/backup"
            schedule = "Mon..Fri 01:00"
            bitmap = "nightly-bitmap"
            format = "qcow2"
            compression = "zstd"
            consistency = "frozen"
            speed-limit = "100M"
            keep-incrementals = 7
            new-chain-every = "7d"
            keep-chains = 2
            lvm-snapshot = true

            [plan."raw-weekly"]
            devices = ["/dev/disk/by-id/ata-SAMSUNG_SSD_123"]
            repository = "/srv/raw"
            schedule = "weekly"
            format = "raw"
            speed-limit = 1_048_576
            """
        let config = try RingbackConfig.parse(text, file: "t.toml")
        #expect(config.daemon.hooksDir == "/etc/ringback/hooks.d")
        #expect(config.daemon.hookTimeout?.seconds == 90)
        #expect(config.daemon.freezeTimeout?.seconds == 10)
        #expect(config.daemon.group == "backup")
        #expect(config.metrics.listen == ListenAddress(host: "127.0.0.1", port: 9469))
        #expect(config.metrics.textfile == "/var/lib/prometheus/node-exporter/ringback.prom")
        #expect(config.plans.map(\.name) == ["nightly", "raw-weekly"])

        let n = try #require(config.plan(named: "nightly"))
        #expect(n.devices.map(\.name) == ["/dev/sdb", "vg0/root", "/dev/mapper/vg0-home"])
        #expect(n.devices.map(\.path) == ["/dev/sdb", "/dev/vg0/root", "/dev/mapper/vg0-home"])
        #expect(n.devices.map(\.id) == ["sdb", "vg0-root", "vg0-home"])
        #expect(n.repository == "/srv/backup")
        #expect(n.schedule.text == "Mon..Fri 01:00")
        #expect(n.bitmap == "nightly-bitmap")
        #expect(n.format == .qcow2 && n.compression == .zstd && n.consistency == .frozen)
        #expect(n.speedLimit == 100 << 20)
        #expect(n.keepIncrementals == 7 && n.keepChains == 2)
        #expect(n.newChainEvery.map(\.seconds) == 604_800)
        #expect(n.line == 12)
        #expect(n.lvmSnapshot)

        let r = try #require(config.plan(named: "raw-weekly"))
        #expect(r.devices.map(\.id) == ["ata-SAMSUNG_SSD_123"])
        #expect(r.format == .raw && r.speedLimit == 1 << 20)
        #expect(r.bitmap == "plan-raw-weekly")
        #expect(r.keepIncrementals == nil && r.keepChains == nil && r.newChainEvery == nil)
        #expect(!r.lvmSnapshot)
    }

    @Test("defaults: a plan needs only devices, repository and schedule")
    func defaults() throws {
        let config = try RingbackConfig.parse("""
            [plan.a]
            devices = ["/dev/sdb"]
            repository = "/srv/backup"
            schedule = "every 6h"
            """, file: "t.toml")
        let p = try #require(config.plans.first)
        #expect(p.bitmap == "plan-a")
        #expect(p.format == .qcow2 && p.compression == .none && p.consistency == .none)
        #expect(p.speedLimit == 0)
        #expect(p.keepIncrementals == nil && p.keepChains == nil && p.newChainEvery == nil)
        #expect(config.daemon == RingbackConfig.DaemonSettings())
        #expect(config.metrics == RingbackConfig.MetricsSettings())
    }

    @Test("an empty file, comments only, and empty metrics values are valid: nothing configured")
    func empty() throws {
        for text in ["", "\n\n", "# nothing\n   # at all\n", "[metrics]\nlisten = \"\"\ntextfile = \"\"\n", "[daemon]\n[metrics]\n[plan]\n"] {
            let c = try RingbackConfig.parse(text, file: "t.toml")
            #expect(c.plans.isEmpty && c.metrics.listen == nil && c.metrics.textfile == nil)
        }
    }

    @Test("CRLF line ends, a byte-order mark, tabs, quoted keys and escapes")
    func tomlDetails() throws {
        let text = "\u{FEFF}[plan.a]\r\n\t\"devices\"\t=\t[\"/dev/sdb\"]\r\nrepository = \"/srv/b\\u00e4ckup\"\r\n"
            + "schedule = 'every 1d' # literal\r\nbitmap = \"tab\\there\\\\\"\r\n"
        let p = try #require(try RingbackConfig.parse(text, file: "t.toml").plans.first)
        #expect(p.repository == "/srv/bäckup")
        #expect(p.bitmap == "tab\there\\")
        #expect(p.schedule.text == "every 1d")
    }

    @Test("IPv6 and host-name listeners")
    func listeners() throws {
        #expect(try ListenAddress(parsing: "[::1]:9469") == ListenAddress(host: "::1", port: 9469))
        #expect(try ListenAddress(parsing: "localhost:80").description == "localhost:80")
        #expect(ListenAddress(host: "::1", port: 9).description == "[::1]:9")
    }

    @Test("device folders: readable, stable names", arguments: [
        ("/dev/sdb", "sdb", "/dev/sdb"), ("/dev/sdb1", "sdb1", "/dev/sdb1"), ("vg0/root", "vg0-root", "/dev/vg0/root"),
        ("/dev/vg0/root", "vg0-root", "/dev/vg0/root"), ("/dev/mapper/vg0-home", "vg0-home", "/dev/mapper/vg0-home"),
        ("/dev/disk/by-id/nvme-eui.0025", "nvme-eui.0025", "/dev/disk/by-id/nvme-eui.0025"),
        ("/dev/nvme0n1p2", "nvme0n1p2", "/dev/nvme0n1p2"), ("/srv/disk image", "srv-disk_image", "/srv/disk image"),
    ])
    func deviceIDs(name: String, id: String, path: String) {
        #expect(BackupPlan.deviceID(for: name) == id)
        #expect(BackupPlan.devicePath(for: name) == path)
    }

    @Test("sizes and durations")
    func values() throws {
        #expect(try ByteSize.parse("0") == 0)
        #expect(try ByteSize.parse("512K") == 512 << 10)
        #expect(try ByteSize.parse("100MiB") == 100 << 20)
        #expect(try ByteSize.parse("2gb") == 2 << 30)
        #expect(try ByteSize.parse("1T") == 1 << 40)
        #expect(throws: ValueError.self) { try ByteSize.parse("99999999999T") }
        #expect(try TimeSpan(parsing: "1w2d3h4m5s").seconds == 604_800 + 2 * 86_400 + 3 * 3600 + 4 * 60 + 5)
        #expect(TimeSpan(seconds: 90).text == "1m30s")
        #expect(TimeSpan(seconds: 86_400 * 8).text == "1w1d")
    }

    /// Any string survives being written as a TOML basic string and read back.
    @Test func basicStringsRoundTrip() async {
        let scalar = Gen.int(in: 0...0x10FFFF).map { v -> Character in
            Character(Unicode.Scalar(UInt32(v)) ?? "?")
        }
        await propertyCheck(count: 300, input: scalar.array(of: 0...40)) { chars in
            let s = String(chars)
            let doc = try? TOMLDocument.parse("[t]\nk = \(quoted(s))\n", file: "t")
            #expect(doc?.tables.last?.entries.first?.value == .string(s), "\(quoted(s))")
        }
    }

    /// Arbitrary bytes never crash the parser; a refusal names a line of the input.
    @Test func garbageIsRefusedWithALine() async {
        let alphabet = Array("[]=\"'#.,-_ab01\n\t {}\\:".utf8) + [0xff, 0x0d, 0x00]
        await propertyCheck(count: 500, input: Gen.element(of: alphabet).array(of: 0...60)) { optionalBytes in
            let bytes = optionalBytes.compactMap { $0 }
            do {
                _ = try RingbackConfig.parse(bytes: bytes, file: "g")
            } catch let error as ConfigError {
                let lines = bytes.filter { $0 == 0x0a }.count + 1
                #expect(error.problems.allSatisfy { (1...lines).contains($0.line) }, "\(error)")
            }
        }
    }

    @Test("the default config shipped in the .deb runs no plan, and its example plan is valid once uncommented")
    func shippedDefault() throws {
        let path = Self.repositoryRoot.appendingPathComponent("packaging/ringback.toml").path
        let config = try RingbackConfig.load(path: path)
        #expect(config.plans.isEmpty)
        #expect(config.metrics.listen == nil)
        // The example is commented out with a single '#' before each line ("#[plan.nightly]",
        // "#devices = ..."); explanations use "# ".
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            line.hasPrefix("#") && !line.hasPrefix("# ") && line.count > 1 ? line.dropFirst() : line
        }.joined(separator: "\n")
        let example = try RingbackConfig.parse(uncommented, file: path)
        #expect(example.plans.count == 1)
        #expect(example.metrics.listen != nil)
    }

    @Test("the README's example configuration is valid and sets every plan key")
    func readmeExample() throws {
        let readme = try String(contentsOfFile: Self.repositoryRoot.appendingPathComponent("README.md").path, encoding: .utf8)
        let section = try #require(readme.range(of: "## Configuration and backup plans"))
        let start = try #require(readme.range(of: "```toml\n", range: section.upperBound..<readme.endIndex))
        let end = try #require(readme.range(of: "```", range: start.upperBound..<readme.endIndex))
        let config = try RingbackConfig.parse(String(readme[start.upperBound..<end.lowerBound]), file: "README.md")
        #expect(!config.plans.isEmpty)
        let table = try TOMLDocument.parse(String(readme[start.upperBound..<end.lowerBound]), file: "README.md")
        let keys = Set(table.tables.filter { $0.path.first == "plan" }.flatMap { $0.entries.map(\.key) })
        #expect(keys == Set(ConfigChecker.planKeys))
        #expect(config.metrics.listen != nil && config.daemon.freezeTimeout != nil)
    }
}
