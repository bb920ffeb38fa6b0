import ArgumentParser
import ControlProtocol
import Foundation

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "List ringbackd's backup plans, or run one now.",
        discussion: """
            Plans are the [plan.NAME] tables of ringbackd's configuration file
            (/etc/ringback/ringback.toml); ringbackd runs them on their schedules.

            Examples: ringback plan list
                      ringback plan run nightly
            """,
        subcommands: [PlanListCommand.self, PlanRunCommand.self])
}

struct PlanListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "The plans with their schedule, next run, last run and its result.",
        discussion: """
            Times are UTC. With --json: an array of objects (name, schedule, devices, next-run,
            last-run, last-result: "success", "failed", "running" or null, last-error,
            last-duration in seconds, and more). When ringbackd could not load its configuration
            file, the problems are printed on stderr: it keeps running the plans listed.

            Example: ringback plan list --json
            """)
    @OptionGroup var daemon: DaemonOptions

    func run() {
        let reply = daemon.execute("x-query-plans")
        if let error = reply["config-error"]?.stringValue {
            warn("ringbackd could not load \(reply["config"]?.stringValue ?? "its configuration"); "
                 + "it keeps running the plans listed:\n" + error)
        }
        let plans = reply["plans"]?.arrayValue ?? []
        if daemon.json { print(JSONValue.array(plans)); return }
        if plans.isEmpty {
            print("no plans (config \(reply["config"]?.stringValue ?? "?"))")
            return
        }
        var rows = [["NAME", "SCHEDULE", "NEXT-RUN", "LAST-RUN", "RESULT"]]
        for p in plans {
            rows.append([p["name"]?.stringValue ?? "?", p["schedule"]?.stringValue ?? "?",
                         p["next-run"]?.stringValue ?? "never", p["last-run"]?.stringValue ?? "-", Self.result(p)])
        }
        let widths = (0..<4).map { c in rows.map { $0[c].count }.max()! }
        for row in rows {
            print((0..<4).map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                  + "  " + row[4])
        }
    }

    static func result(_ p: JSONValue) -> String {
        if p["running"]?.boolValue == true { return "running" }
        guard let r = p["last-result"]?.stringValue else { return "-" }
        var s = r
        if let d = p["last-duration"]?.doubleValue { s += String(format: " (%.1f s)", d) }
        if let e = p["last-error"]?.stringValue { s += ": " + e }
        if let w = p["last-warning"]?.stringValue { s += " (warning: \(w))" }
        return s
    }
}

struct PlanRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a plan now and wait for it to end.",
        discussion: """
            Exit status 0 when every backup of the run succeeded, 1 otherwise. A plan that is
            already running is refused. With --no-wait, returns once the run started.

            Example: ringback plan run nightly
            """)
    @Argument(help: "The plan's name (its [plan.NAME] table).") var name: String
    @Flag(help: "Return once the run has started.") var noWait = false
    @OptionGroup var daemon: DaemonOptions

    func run() throws {
        let client: QMPClient
        let started: String
        do {
            client = try QMPClient(path: daemon.socket)
            started = try client.execute("x-plan-run", ["name": .string(name)])["started-at"]?.stringValue ?? ""
        } catch {
            fail("\(error)")
        }
        if noWait {
            print(daemon.json ? JSONValue.object(["name": .string(name), "started-at": .string(started)]).description
                  : "plan '\(name)' started at \(started)")
            return
        }
        let outcome = wait(client, started: started)
        if daemon.json {
            print(outcome)
        } else if outcome["result"]?.stringValue == "success" {
            print("plan '\(name)' succeeded in \(String(format: "%.1f", outcome["duration"]?.doubleValue ?? 0)) s")
            for b in outcome["backups"]?.arrayValue ?? [] {
                print("  \(b["device"]?.stringValue ?? "?"): \(b["kind"]?.stringValue ?? "?") → \(b["image"]?.stringValue ?? "?")"
                      + (b["reason"]?.stringValue.map { " (\($0))" } ?? ""))
            }
            if let w = outcome["warning"]?.stringValue { warn("warning: \(w)") }
        } else {
            warn("plan '\(name)' failed after \(String(format: "%.1f", outcome["duration"]?.doubleValue ?? 0)) s: "
                 + (outcome["error"]?.stringValue ?? "unknown error"))
        }
        if outcome["result"]?.stringValue != "success" { throw ExitCode(1) }
    }

    /// The run's X_PLAN_COMPLETED event; or, if it was missed, its record in
    /// x-query-plans once the plan no longer runs. Shows the jobs' progress on a terminal.
    private func wait(_ client: QMPClient, started: String) -> JSONValue {
        let showProgress = isatty(2) != 0 && !daemon.json
        defer { if showProgress { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) } }
        while true {
            for e in client.takeEvents() where e["event"]?.stringValue == "X_PLAN_COMPLETED" {
                if e["data"]?["name"]?.stringValue == name && e["data"]?["started-at"]?.stringValue == started {
                    return e["data"]!
                }
            }
            do {
                let plans = try client.execute("x-query-plans")["plans"]?.arrayValue ?? []
                guard let p = plans.first(where: { $0["name"]?.stringValue == name }) else {
                    fail("plan '\(name)' is no longer in ringbackd's configuration; its run's end is unknown")
                }
                if p["running"]?.boolValue == false, p["last-run"]?.stringValue == started, client.events.isEmpty {
                    var o: [String: JSONValue] = ["name": .string(name), "started-at": .string(started),
                                                  "result": p["last-result"] ?? .null, "duration": p["last-duration"] ?? .null,
                                                  "backups": p["last-backups"] ?? .array([])]
                    if let e = p["last-error"], e != .null { o["error"] = e }
                    if let w = p["last-warning"] { o["warning"] = w }
                    return .object(o)
                }
                if showProgress {
                    let jobs = (try client.execute("query-jobs").arrayValue ?? [])
                        .filter { $0["id"]?.stringValue?.hasPrefix("plan-\(name)-") == true }
                    let done = jobs.reduce(0) { $0 + ($1["current-progress"]?.intValue ?? 0) }
                    let total = jobs.reduce(0) { $0 + ($1["total-progress"]?.intValue ?? 0) }
                    let pct = total > 0 ? Double(done) * 100 / Double(total) : 0
                    FileHandle.standardError.write(Data(String(format: "\r\u{1b}[Kplan %@: %.1f%% of %@", name, pct,
                                                               formatBytes(UInt64(total))).utf8))
                }
            } catch {
                fail("lost ringbackd while waiting for plan '\(name)': \(error)")
            }
            if client.events.isEmpty { usleep(300_000) }
        }
    }
}
