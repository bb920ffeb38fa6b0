import ControlProtocol
import Foundation

/// A test's QMP connection to ringbackd that keeps every event it sees, in
/// order, and waits for events with a deadline so a broken daemon fails the
/// test instead of hanging it.
public final class QMPSession: @unchecked Sendable {
    public let client: QMPClient
    /// Every event received so far.
    public private(set) var events: [JSONValue] = []

    public init(socket: String, timeout: Double = 60) throws {
        client = try QMPClient(path: socket)
        client.setTimeout(seconds: timeout)
    }

    @discardableResult
    public func execute(_ command: String, _ arguments: [String: JSONValue] = [:]) throws -> JSONValue {
        defer { events += client.takeEvents() }
        return try client.execute(command, arguments)
    }

    /// Runs a command that must fail and returns its error text.
    public func error(_ command: String, _ arguments: [String: JSONValue] = [:]) throws -> String {
        do {
            try execute(command, arguments)
        } catch let e as CommandError {
            return e.desc
        }
        throw CommandError("\(command) succeeded but was expected to fail")
    }

    /// Waits for the first event named `name` (searching every event seen so
    /// far) whose data satisfies `matching`, and returns it.
    @discardableResult
    public func waitFor(_ name: String, matching: (JSONValue) -> Bool = { _ in true }) throws -> JSONValue {
        try waitFor([name], what: name, matching: matching)
    }

    /// Waits until job `id` has completed or been cancelled; returns that event.
    @discardableResult
    public func waitForEnd(of id: String) throws -> JSONValue {
        try waitFor(["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"], what: "the end of job \(id)") {
            $0["device"]?.stringValue == id
        }
    }

    private func waitFor(_ names: Set<String>, what: String, matching: (JSONValue) -> Bool) throws -> JSONValue {
        var index = 0
        while true {
            events += client.takeEvents()
            while index < events.count {
                let e = events[index]
                index += 1
                if names.contains(e["event"]?.stringValue ?? ""), matching(e["data"] ?? .null) { return e }
            }
            do { events.append(try client.nextEvent()) } catch {
                let last = events.suffix(8).map(\.description).joined(separator: "\n  ")
                throw CommandError("\(error) (waiting for \(what)); last events:\n  \(last)")
            }
        }
    }

    /// Waits until job `id` reaches `status` (a JOB_STATUS_CHANGE event).
    public func waitForStatus(_ id: String, _ status: String) throws {
        try waitFor("JOB_STATUS_CHANGE") { $0["id"]?.stringValue == id && $0["status"]?.stringValue == status }
    }

    /// The statuses job `id` went through, from its JOB_STATUS_CHANGE events.
    public func statuses(of id: String) -> [String] {
        events += client.takeEvents()
        return events.filter { $0["event"]?.stringValue == "JOB_STATUS_CHANGE" && $0["data"]?["id"]?.stringValue == id }
            .compactMap { $0["data"]?["status"]?.stringValue }
    }

    /// The names of the events about job `id`, in order.
    public func eventNames(of id: String) -> [String] {
        events += client.takeEvents()
        return events.filter { $0["data"]?["id"]?.stringValue == id || $0["data"]?["device"]?.stringValue == id }
            .compactMap { $0["event"]?.stringValue }
    }

    /// A job's entry in query-jobs, or nil.
    public func job(_ id: String) throws -> JSONValue? {
        try execute("query-jobs").arrayValue?.first { $0["id"]?.stringValue == id }
    }

    /// A bitmap's count after draining the tracker, or nil when it does not exist.
    public func count(_ device: String, _ bitmap: String) throws -> UInt64? {
        try execute("x-tracker-barrier", ["node": .string(device)])
        let block = try execute("query-block").arrayValue ?? []
        let entry = block.first { $0["device"]?.stringValue == device }
        let b = entry?["dirty-bitmaps"]?.arrayValue?.first { $0["name"]?.stringValue == bitmap }
        return b?["count"]?.intValue.map { UInt64($0) }
    }

    /// A bitmap's query-block entry.
    public func bitmap(_ device: String, _ name: String) throws -> JSONValue? {
        let block = try execute("query-block").arrayValue ?? []
        let entry = block.first { $0["device"]?.stringValue == device }
        return entry?["dirty-bitmaps"]?.arrayValue?.first { $0["name"]?.stringValue == name }
    }
}

/// Building QMP arguments in tests without the JSONValue case names.
public func qmpArgs(_ pairs: KeyValuePairs<String, Any>) -> [String: JSONValue] {
    var out: [String: JSONValue] = [:]
    for (k, v) in pairs { out[k] = jsonValue(v) }
    return out
}

func jsonValue(_ v: Any) -> JSONValue {
    switch v {
    case let j as JSONValue: return j
    case let s as String: return .string(s)
    case let b as Bool: return .bool(b)
    case let i as Int: return .int(Int64(i))
    case let i as Int64: return .int(i)
    case let u as UInt64: return .int(Int64(u))
    case let a as [Any]: return .array(a.map(jsonValue))
    case let o as [String: Any]: return .object(o.mapValues(jsonValue))
    default: return .string("\(v)")
    }
}

/// One transaction action.
public func action(_ type: String, _ data: KeyValuePairs<String, Any>) -> JSONValue {
    .object(["type": .string(type), "data": .object(qmpArgs(data))])
}
