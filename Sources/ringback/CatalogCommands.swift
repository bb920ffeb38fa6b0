import ArgumentParser
import Catalog
import ControlProtocol
import Foundation

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the backups in ringbackd's catalog, flagging those that cannot be restored.",
        discussion: """
            Every backup is listed with RESTORABLE yes or NO; below the table, each one
            that cannot be restored is named with the reason (it failed, was cancelled,
            is still running, builds on a backup that did not complete, was merged away or
            removed by chain maintenance). Failed and cancelled backups that a later
            restorable backup of the same device has superseded, and merged or removed
            backups, are left out unless --all is given.
            Examples: ringback list
                      ringback list --device /dev/sdb --all
                      ringback list --json
            """)

    @Option(help: "Only the backups of this device.") var device: String?
    @Flag(help: "Also list superseded failures and backups merged or removed by chain maintenance.") var all = false
    @OptionGroup var daemon: DaemonOptions

    func run() {
        var arguments: [String: JSONValue] = ["all": .bool(all)]
        if let device { arguments["device"] = .string(deviceArgument(device)) }
        let reply = daemon.execute("x-query-backups", arguments)
        guard let items = reply.arrayValue else {
            fail("ringbackd's reply to x-query-backups is not a list of backups: \(reply)")
        }
        var records = items.map { decodeReply(BackupRecord.self, $0, from: "x-query-backups") }
        // Filtered here too, so that the flag means the same with a daemon
        // that does not filter.
        if !all { records = BackupListing.defaultView(records) }
        if daemon.json {
            // The daemon's own objects, so that fields this ringback does not
            // know are passed on.
            let shown = Set(records.map(\.id))
            print(JSONValue.array(items.filter { $0["id"]?.stringValue.map(shown.contains) ?? false }))
        } else {
            print(BackupListing.table(records), terminator: "")
        }
    }
}

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show every field of one backup in ringbackd's catalog.",
        discussion: "Example: ringback show b-12")

    @Argument(help: "The backup's id, as `ringback list` prints it.") var backup: String
    @OptionGroup var daemon: DaemonOptions

    func run() {
        let reply = daemon.execute("x-query-backup", ["id": .string(backup)])
        if daemon.json { print(reply); return }
        print(BackupListing.details(decodeReply(BackupRecord.self, reply, from: "x-query-backup")), terminator: "")
    }
}

/// Reads a daemon reply as `T`; a reply this ringback cannot read ends the
/// command with a message that says which member was wrong.
private func decodeReply<T: Decodable>(_: T.Type, _ value: JSONValue, from command: String) -> T {
    do {
        return try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
    } catch let error as DecodingError {
        let context: DecodingError.Context
        switch error {
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .keyNotFound(_, let c), .dataCorrupted(let c): context = c
        @unknown default: fail("ringbackd's reply to \(command) cannot be read: \(value)")
        }
        var where_ = context.codingPath.map(\.stringValue).joined(separator: ".")
        if case .keyNotFound(let key, _) = error { where_ += (where_.isEmpty ? "" : ".") + key.stringValue }
        fail("ringbackd's reply to \(command) cannot be read (member '\(where_)': \(context.debugDescription)): \(value)")
    } catch {
        fail("ringbackd's reply to \(command) cannot be read: \(value)")
    }
}
