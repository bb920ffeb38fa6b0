import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The QMP wire format (DESIGN §12), shared by ringbackd and the CLI.
public enum QMP {
    /// The default control socket.
    public static let defaultSocket = "/run/ringback/qmp.sock"

    /// The socket path: $RINGBACK_SOCKET, else the default.
    public static var socketPath: String {
        ProcessInfo.processInfo.environment["RINGBACK_SOCKET"] ?? defaultSocket
    }

    /// `{"QMP": {"version": {...}, "capabilities": []}}`
    public static func greeting(major: Int, minor: Int, micro: Int, package: String) -> JSONValue {
        .object(["QMP": .object([
            "version": .object([
                "qemu": .object(["major": .int(Int64(major)), "minor": .int(Int64(minor)), "micro": .int(Int64(micro))]),
                "package": .string(package),
            ]),
            "capabilities": .array([]),
        ])])
    }

    public static func success(_ value: JSONValue, id: JSONValue?) -> JSONValue {
        var o: [String: JSONValue] = ["return": value]
        if let id { o["id"] = id }
        return .object(o)
    }

    public static func failure(_ error: CommandError, id: JSONValue?) -> JSONValue {
        var o: [String: JSONValue] = ["error": .object(["class": .string(error.errorClass), "desc": .string(error.desc)])]
        if let id { o["id"] = id }
        return .object(o)
    }

    /// An event with the QMP timestamp.
    public static func event(_ name: String, data: JSONValue) -> JSONValue {
        var tv = timeval()
        gettimeofday(&tv, nil)
        return .object([
            "event": .string(name), "data": data,
            "timestamp": .object(["seconds": .int(Int64(tv.tv_sec)), "microseconds": .int(Int64(tv.tv_usec))]),
        ])
    }
}

/// A command that failed: QMP's `{"class": ..., "desc": ...}`.
public struct CommandError: Error, CustomStringConvertible, Equatable, Sendable {
    public var errorClass: String
    public var desc: String
    public init(_ desc: String, class errorClass: String = "GenericError") {
        self.desc = desc
        self.errorClass = errorClass
    }
    public var description: String { desc }
    public static func commandNotFound(_ name: String) -> CommandError {
        CommandError("The command \(name) has not been found", class: "CommandNotFound")
    }
}

/// A QMP client over a Unix socket: connects, reads the greeting, negotiates
/// capabilities, then runs commands one at a time; events that arrive in
/// between are kept in `events`.
public final class QMPClient {
    private let fd: Int32
    private var splitter = JSONStreamSplitter(limit: 64 << 20)
    private var pending: [JSONValue] = []
    public private(set) var events: [JSONValue] = []
    public private(set) var greeting: JSONValue = .null
    private var nextID = 1

    /// Connects to `path`; errors say whether the daemon is running.
    public init(path: String = QMP.socketPath) throws {
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        fd = sock
        guard sock >= 0 else { throw CommandError("cannot create a socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(sock)
            throw CommandError("socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(sock)
            let hint = (e == ENOENT || e == ECONNREFUSED) ? " (is ringbackd running?)" : ""
            throw CommandError("cannot connect to ringbackd at \(path): \(String(cString: strerror(e)))\(hint)")
        }
        let g = try receive()
        guard g["QMP"] != nil else { close(fd); throw CommandError("\(path) did not greet with QMP: \(g)") }
        greeting = g
        _ = try execute("qmp_capabilities")
    }

    deinit { close(fd) }

    /// Makes every later wait for the daemon give up after `seconds` with an
    /// error instead of blocking forever (tests, and callers with a deadline).
    public func setTimeout(seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Runs one command; returns its `return` value or throws its error.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: JSONValue] = [:]) throws -> JSONValue {
        let id = JSONValue.int(Int64(nextID))
        nextID += 1
        var message: [String: JSONValue] = ["execute": .string(command), "id": id]
        if !arguments.isEmpty { message["arguments"] = .object(arguments) }
        try send(.object(message))
        while true {
            let reply = try receive()
            if reply["event"] != nil { events.append(reply); continue }
            guard reply["id"] == id else { continue }
            if let error = reply["error"] {
                throw CommandError(error["desc"]?.stringValue ?? "\(error)",
                                   class: error["class"]?.stringValue ?? "GenericError")
            }
            return reply["return"] ?? .null
        }
    }

    /// Returns and forgets the events received so far.
    public func takeEvents() -> [JSONValue] {
        defer { events = [] }
        return events
    }

    /// Waits for the next event (or returns one already received).
    public func nextEvent() throws -> JSONValue {
        if !events.isEmpty { return events.removeFirst() }
        while true {
            let m = try receive()
            if m["event"] != nil { return m }
        }
    }

    private func send(_ value: JSONValue) throws {
        let data = Array((value.description + "\n").utf8)
        var off = 0
        while off < data.count {
            let n = data[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw CommandError("cannot send to ringbackd: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    private func receive() throws -> JSONValue {
        while pending.isEmpty {
            var buf = [UInt8](repeating: 0, count: 65_536)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw CommandError("timed out waiting for ringbackd") }
                throw CommandError("cannot read from ringbackd: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw CommandError("ringbackd closed the connection") }
            do {
                for object in try splitter.feed(buf[0..<n]) { pending.append(try JSONValue.parse(object)) }
            } catch { throw CommandError("ringbackd sent malformed data: \(error)") }
        }
        return pending.removeFirst()
    }
}
