import ArgumentParser
import BlockDevices
import ControlProtocol
import Foundation

/// Options shared by the commands that talk to ringbackd.
struct DaemonOptions: ParsableArguments {
    @Option(help: "ringbackd's control socket (default: $RINGBACK_SOCKET or /run/ringback/qmp.sock).")
    var socket: String = QMP.socketPath

    @Flag(help: "Print the daemon's reply as JSON.")
    var json = false

    /// Runs one command on the daemon; a failure exits with the daemon's message.
    func execute(_ command: String, _ arguments: [String: JSONValue] = [:]) -> JSONValue {
        do {
            return try QMPClient(path: socket).execute(command, arguments)
        } catch {
            fail("\(error)")
        }
    }
}

struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Start tracking writes to a device (through ringbackd).",
        discussion: "Example: ringback track /dev/sdb")
    @Argument(help: "The device to track.") var device: String
    @OptionGroup var daemon: DaemonOptions
    func run() {
        _ = daemon.execute("x-track-start", ["node": .string(deviceArgument(device))])
        if !daemon.json { print("tracking writes to \(device)") } else { print("{}") }
    }
}

struct UntrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "untrack",
        abstract: "Stop tracking writes to a device; its bitmaps must be removed first.",
        discussion: "Example: ringback untrack /dev/sdb")
    @Argument(help: "The device to stop tracking.") var device: String
    @OptionGroup var daemon: DaemonOptions
    func run() {
        _ = daemon.execute("x-track-stop", ["node": .string(deviceArgument(device))])
        if !daemon.json { print("stopped tracking \(device)") } else { print("{}") }
    }
}

struct BitmapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bitmap",
        abstract: "Manage dirty bitmaps of a tracked device (through ringbackd).",
        discussion: """
            Examples: ringback bitmap add /dev/sdb nightly --granularity 64K --persistent
                      ringback bitmap list /dev/sdb
                      ringback bitmap merge /dev/sdb weekly --from nightly
                      ringback bitmap clear /dev/sdb nightly
            """)

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case add, remove, clear, enable, disable, merge, list
    }

    @Argument(help: "add, remove, clear, enable, disable, merge or list.") var action: Action
    @Argument(help: "The device.") var device: String
    @Argument(help: "The bitmap's name (not for list).") var name: String?
    @Option(help: "Granularity for add: a power of two of at least 512 (e.g. 64K).") var granularity: ByteCount?
    @Flag(help: "For add: keep the bitmap across daemon restarts.") var persistent = false
    @Flag(help: "For add: create it disabled (not recording).") var disabled = false
    @Option(name: .customLong("from"), help: "For merge: a source bitmap (repeatable).") var sources: [String] = []
    @OptionGroup var daemon: DaemonOptions

    func validate() throws {
        if action != .list && name == nil { throw ValidationError("'bitmap \(action.rawValue)' needs a bitmap name") }
        if action == .merge && sources.isEmpty { throw ValidationError("'bitmap merge' needs at least one --from bitmap") }
    }

    func run() {
        let node = JSONValue.string(deviceArgument(device))
        switch action {
        case .list:
            let reply = daemon.execute("query-block")
            // The name ringbackd keys the device by: an LV's dm node as LVM
            // names it, any other device's path with its links resolved.
            let resolved: String
            do {
                resolved = try LVM().node(for: deviceArgument(device))
                    ?? URL(fileURLWithPath: absolute(device)).resolvingSymlinksInPath().path
            } catch {
                fail("\(error)")
            }
            let entry = reply.arrayValue?.first { $0["device"]?.stringValue == resolved || $0["node-name"]?.stringValue == resolved }
            let bitmaps = entry?["dirty-bitmaps"]?.arrayValue ?? []
            if daemon.json { print(JSONValue.array(bitmaps)); return }
            guard entry != nil else { fail("\(device) is not tracked by ringbackd") }
            print("NAME                 GRANULARITY        COUNT  RECORDING  BUSY   PERSISTENT  INCONSISTENT")
            for b in bitmaps {
                func flag(_ k: String) -> String { b[k]?.boolValue == true ? "yes" : "no" }
                let line = (b["name"]?.stringValue ?? "?").padding(toLength: 20, withPad: " ", startingAt: 0)
                    + String(format: " %11lld %12lld  ", b["granularity"]?.intValue ?? 0, b["count"]?.intValue ?? 0)
                    + flag("recording").padding(toLength: 11, withPad: " ", startingAt: 0)
                    + flag("busy").padding(toLength: 7, withPad: " ", startingAt: 0)
                    + flag("persistent").padding(toLength: 12, withPad: " ", startingAt: 0)
                    + flag("inconsistent")
                print(line)
            }
        case .add:
            var args: [String: JSONValue] = ["node": node, "name": .string(name!), "persistent": .bool(persistent),
                                             "disabled": .bool(disabled)]
            if let granularity { args["granularity"] = .int(Int64(granularity.value)) }
            report(daemon.execute("block-dirty-bitmap-add", args), "added bitmap '\(name!)' to \(device)")
        case .merge:
            report(daemon.execute("block-dirty-bitmap-merge", ["node": node, "target": .string(name!),
                                                               "bitmaps": .array(sources.map { .string($0) })]),
                   "merged \(sources.joined(separator: ", ")) into '\(name!)' on \(device)")
        case .remove, .clear, .enable, .disable:
            report(daemon.execute("block-dirty-bitmap-\(action.rawValue)", ["node": node, "name": .string(name!)]),
                   "\(action.rawValue == "clear" ? "cleared" : action.rawValue + "d") bitmap '\(name!)' on \(device)")
        }
    }

    private func report(_ reply: JSONValue, _ text: String) {
        print(daemon.json ? reply.description : text)
    }
}

struct QMPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp",
        abstract: "Send one raw QMP command to ringbackd and print the reply.",
        discussion: #"Example: ringback qmp query-block   or   ringback qmp block-dirty-bitmap-add '{"node": "/dev/sdb", "name": "b0"}'"#)
    @Argument(help: "The command name.") var command: String
    @Argument(help: "Its arguments as a JSON object.") var arguments: String?
    @Option(help: "ringbackd's control socket.") var socket: String = QMP.socketPath
    func run() {
        var args: [String: JSONValue] = [:]
        if let arguments {
            guard let parsed = try? JSONValue.parse(Data(arguments.utf8)), let o = parsed.objectValue else {
                fail("arguments must be a JSON object, got: \(arguments)")
            }
            args = o
        }
        do { print(try QMPClient(path: socket).execute(command, args)) } catch { fail("\(command): \(error)") }
    }
}
