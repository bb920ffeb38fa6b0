import ArgumentParser
import ControlProtocol
import Foundation

struct JobsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "List ringbackd's jobs with their status and progress.",
        discussion: "Example: ringback jobs")
    @OptionGroup var daemon: DaemonOptions
    func run() {
        let reply = daemon.execute("query-jobs")
        if daemon.json { print(reply); return }
        let jobs = reply.arrayValue ?? []
        if jobs.isEmpty { print("no jobs"); return }
        print("ID".padding(toLength: 24, withPad: " ", startingAt: 0) + " STATUS      PROGRESS")
        for j in jobs {
            let id = j["id"]?.stringValue ?? "?"
            let status = j["status"]?.stringValue ?? "?"
            let done = UInt64(j["current-progress"]?.intValue ?? 0), total = UInt64(j["total-progress"]?.intValue ?? 0)
            var line = id.padding(toLength: 24, withPad: " ", startingAt: 0) + " "
                + status.padding(toLength: 11, withPad: " ", startingAt: 0) + " "
                + "\(formatBytes(done)) / \(formatBytes(total))"
            if let e = j["error"]?.stringValue { line += "  error: \(e)" }
            print(line)
        }
    }
}

struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Pause, resume, cancel, finalize or dismiss one of ringbackd's jobs.",
        discussion: """
            A verb the job's status does not accept is refused with QEMU's message, e.g.
            "Job 'b0' in state 'concluded' cannot accept command verb 'pause'".

            Examples: ringback job pause backup-sdb
                      ringback job finalize backup-sdb
            """)
    enum Verb: String, ExpressibleByArgument, CaseIterable { case pause, resume, cancel, complete, finalize, dismiss }
    @Argument(help: "pause, resume, cancel, complete, finalize or dismiss.") var verb: Verb
    @Argument(help: "The job id.") var id: String
    @OptionGroup var daemon: DaemonOptions
    func run() {
        let reply = daemon.execute("job-\(verb.rawValue)", ["id": .string(id)])
        print(daemon.json ? reply.description : "job '\(id)': \(verb.rawValue) done")
    }
}

struct TransactionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transaction",
        abstract: "Run a QMP transaction from a JSON file, and wait for the jobs it starts.",
        discussion: """
            The file holds QMP's `transaction` arguments, {"actions": [...], "properties": {...}},
            or just the list of actions. Actions are applied all-or-nothing; the jobs start only
            once every action is prepared. Exit status 0 when every job completed, 1 otherwise.

            Example: ringback transaction nightly.json
            """)
    @Argument(help: "The JSON file.") var file: String
    @Flag(help: "Return once the transaction is applied, without waiting for its jobs.") var noWait = false
    @OptionGroup var daemon: DaemonOptions

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else { fail("cannot read \(file)") }
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(data) } catch { fail("\(file) is not valid JSON: \(error)") }
        let arguments: [String: JSONValue]
        if let list = parsed.arrayValue {
            arguments = ["actions": .array(list)]
        } else if let o = parsed.objectValue {
            arguments = o
        } else {
            fail("\(file) must hold an object with \"actions\" or a list of actions")
        }
        let jobIDs = (arguments["actions"]?.arrayValue ?? []).compactMap { action -> String? in
            guard action["type"]?.stringValue == "drive-backup", let d = action["data"] else { return nil }
            return d["job-id"]?.stringValue ?? d["device"]?.stringValue
        }
        let client: QMPClient
        do {
            client = try QMPClient(path: daemon.socket)
            try client.execute("transaction", arguments)
        } catch { fail("transaction failed: \(error)") }
        if noWait || jobIDs.isEmpty {
            print(daemon.json ? "{}" : "transaction applied; jobs started: \(jobIDs.joined(separator: ", "))")
            return
        }
        let outcomes = waitForJobs(client, jobIDs, json: daemon.json)
        if outcomes.values.contains(where: { $0["event"]?.stringValue != "BLOCK_JOB_COMPLETED" || $0["data"]?["error"] != nil }) {
            throw ExitCode(1)
        }
    }
}

/// Follows jobs by their events until each has completed or been cancelled,
/// showing progress on a terminal; prints one line (or JSON object) per job.
@discardableResult
func waitForJobs(_ client: QMPClient, _ ids: [String], json: Bool, quiet: Bool = false) -> [String: JSONValue] {
    var outcomes: [String: JSONValue] = [:]
    let showProgress = (quiet || !json) && isatty(2) != 0
    while outcomes.count < Set(ids).count {
        for e in client.takeEvents() {
            guard let name = e["event"]?.stringValue, ["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"].contains(name),
                  let id = e["data"]?["device"]?.stringValue, ids.contains(id) else { continue }
            outcomes[id] = e
            if showProgress { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
            if quiet {
            } else if json {
                print(e)
            } else if name == "BLOCK_JOB_CANCELLED" {
                print("job '\(id)' cancelled")
            } else if let error = e["data"]?["error"]?.stringValue {
                print("job '\(id)' failed: \(error)")
            } else {
                print("job '\(id)' completed: \(e["data"]?["x-summary"]?["image"]?.stringValue ?? e["data"]?["x-summary"]?["backup"]?["image"]?.stringValue ?? "")")
            }
        }
        if outcomes.count == Set(ids).count { break }
        do {
            let jobs = try client.execute("query-jobs").arrayValue ?? []
            if showProgress {
                let mine = jobs.filter { ids.contains($0["id"]?.stringValue ?? "") }
                let done = mine.reduce(0) { $0 + ($1["current-progress"]?.intValue ?? 0) }
                let total = mine.reduce(0) { $0 + ($1["total-progress"]?.intValue ?? 0) }
                let pct = total > 0 ? Double(done) * 100 / Double(total) : 0
                FileHandle.standardError.write(Data(String(format: "\r\u{1b}[K%@: %.1f%% of %@", ids.joined(separator: ", "), pct,
                                                           formatBytes(UInt64(total))).utf8))
            }
            // A job that is gone without an event we saw (dismissed by someone else) ends the wait too.
            for id in ids where outcomes[id] == nil && !jobs.contains(where: { $0["id"]?.stringValue == id }) {
                if client.events.isEmpty {
                    outcomes[id] = .object(["event": .string("GONE"), "data": .object(["device": .string(id)])])
                    if !quiet { print("job '\(id)' is gone (dismissed elsewhere)") }
                }
            }
        } catch {
            fail("lost ringbackd while waiting for \(ids.joined(separator: ", ")): \(error)")
        }
        if client.events.isEmpty { usleep(200_000) }
    }
    return outcomes
}
