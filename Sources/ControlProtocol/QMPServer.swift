import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of the control socket: accepts clients on a Unix socket
/// (mode 0600), checks each peer with SO_PEERCRED, greets it, requires
/// `qmp_capabilities` first, hands every command to `handler`, and sends
/// events to every client that has negotiated. One thread per client; client
/// input never takes the server down (malformed JSON, unknown commands and
/// oversized messages get error replies or a closed connection).
public final class QMPServer: @unchecked Sendable {
    public typealias Handler = @Sendable (_ command: String, _ arguments: [String: JSONValue]) throws -> JSONValue

    public let path: String
    private let handler: Handler
    private let allowedGroup: gid_t?
    private let greeting: JSONValue
    private var listenFD: Int32 = -1
    private let lock = NSLock()
    private var clients: [Int32: Bool] = [:]   // fd → negotiated
    /// One writer at a time per client: a reply (client thread) and an event
    /// (any thread) must not interleave their bytes.
    private var writeLocks: [Int32: NSLock] = [:]
    /// A client that reads nothing for this long is dropped, so that events
    /// sent to it cannot stall the daemon.
    public static let sendTimeoutSeconds = 5
    private var stopped = false
    /// Largest message accepted from a client.
    public static let messageLimit = 1 << 20

    public init(path: String, allowedGroup: gid_t? = nil, greeting: JSONValue, handler: @escaping Handler) {
        self.path = path
        self.allowedGroup = allowedGroup
        self.greeting = greeting
        self.handler = handler
    }

    /// Binds and listens; a stale socket file (no one answering) is replaced,
    /// a live one is an error (another daemon runs).
    public func start() throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if FileManager.default.fileExists(atPath: path) {
            if (try? QMPClient(path: path)) != nil {
                throw CommandError("another ringbackd is already listening on \(path)")
            }
            unlink(path)
        }
        listenFD = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listenFD >= 0 else { throw CommandError("cannot create a socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw CommandError("socket path \(path) is too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        // Create the socket with no access for others from the first moment.
        let oldMask = umask(0o177)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard rc == 0 else { throw CommandError("cannot bind \(path): \(String(cString: strerror(errno)))") }
        chmod(path, 0o600)
        if let allowedGroup { chown(path, 0, allowedGroup); chmod(path, 0o660) }
        guard listen(listenFD, 16) == 0 else { throw CommandError("cannot listen on \(path): \(String(cString: strerror(errno)))") }
        let t = Thread { [self] in acceptLoop() }
        t.name = "ringbackd-accept"
        t.start()
    }

    /// Stops accepting, disconnects every client and removes the socket file.
    public func stop() {
        lock.lock()
        stopped = true
        let fds = Array(clients.keys)
        lock.unlock()
        shutdown(listenFD, Int32(SHUT_RDWR))
        close(listenFD)
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
        unlink(path)
    }

    /// Sends an event to every client that has negotiated capabilities.
    public func broadcast(event name: String, data: JSONValue) {
        let message = QMP.event(name, data: data)
        lock.lock()
        let targets = clients.filter { $0.value }.map(\.key)
        lock.unlock()
        for fd in targets { send(message, to: fd) }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                lock.lock(); let done = stopped; lock.unlock()
                if done { return }
                usleep(10_000)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            guard peerAllowed(fd) else {
                send(QMP.failure(CommandError("permission denied: only root or the configured group may use ringbackd"),
                                 id: nil), to: fd)
                close(fd)
                continue
            }
            var timeout = timeval(tv_sec: Self.sendTimeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            lock.lock(); clients[fd] = false; writeLocks[fd] = NSLock(); lock.unlock()
            let t = Thread { [self] in serve(fd) }
            t.name = "ringbackd-client"
            t.start()
        }
    }

    /// The peer's credentials from SO_PEERCRED (struct ucred: pid, uid, gid,
    /// which Glibc's module hides behind _GNU_SOURCE, hence the plain layout).
    /// A member of the configured group is usually one through a supplementary
    /// group, which SO_PEERCRED does not carry: those come from SO_PEERGROUPS.
    private func peerAllowed(_ fd: Int32) -> Bool {
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, UInt32.max, UInt32.max)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return false }
        if cred.uid == 0 { return true }
        guard let allowedGroup else { return false }
        return cred.gid == allowedGroup || peerGroups(fd).contains(allowedGroup)
    }

    /// The peer's supplementary groups as they were at its connect()
    /// (SO_PEERGROUPS, Linux 4.13, socket(7)); none when the kernel cannot
    /// tell, which refuses a member rather than admitting a stranger.
    private func peerGroups(_ fd: Int32) -> [gid_t] {
        let soPeerGroups: Int32 = 59   // asm-generic/socket.h; not exported by Glibc's module
        var groups = [gid_t](repeating: 0, count: 64)
        while true {
            var len = socklen_t(groups.count * MemoryLayout<gid_t>.stride)
            let rc = groups.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, soPeerGroups, $0.baseAddress, &len) }
            if rc == 0 { return Array(groups.prefix(Int(len) / MemoryLayout<gid_t>.stride)) }
            // Too small a buffer: the kernel fails with ERANGE and says how large.
            guard errno == ERANGE, Int(len) > groups.count * MemoryLayout<gid_t>.stride else { return [] }
            groups = [gid_t](repeating: 0, count: Int(len) / MemoryLayout<gid_t>.stride)
        }
    }

    private func serve(_ fd: Int32) {
        defer {
            lock.lock()
            clients[fd] = nil
            let writer = writeLocks.removeValue(forKey: fd)
            lock.unlock()
            // Wait out a send in progress before the number can be reused.
            writer?.lock()
            close(fd)
            writer?.unlock()
        }
        send(greeting, to: fd)
        var splitter = JSONStreamSplitter(limit: Self.messageLimit)
        var buf = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            // Messages completed before a framing error in the same read are
            // answered first, as if they had come in reads of their own.
            let (objects, failure) = splitter.split(buf[0..<n])
            for object in objects { handle(object, on: fd) }
            if let failure {
                let why = switch failure {
                case .tooLarge(let limit): "message larger than \(limit) bytes"
                case .unexpected(let b): "JSON parse error, unexpected byte 0x\(String(b, radix: 16))"
                }
                send(QMP.failure(CommandError(why), id: nil), to: fd)
                // The stream cannot be resynchronised: close our side, then
                // drain what the client is still sending so that closing does
                // not reset the connection before it has read the error.
                shutdown(fd, Int32(SHUT_WR))
                var timeout = timeval(tv_sec: 1, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                while buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
                return
            }
        }
    }

    private func handle(_ object: Data, on fd: Int32) {
        guard let message = try? JSONValue.parse(object), let fields = message.objectValue else {
            send(QMP.failure(CommandError("JSON parse error"), id: nil), to: fd)
            return
        }
        let id = fields["id"]
        guard let command = fields["execute"]?.stringValue else {
            send(QMP.failure(CommandError("QMP input lacks member 'execute'"), id: id), to: fd)
            return
        }
        var arguments: [String: JSONValue] = [:]
        if let a = fields["arguments"] {
            guard let o = a.objectValue else {
                send(QMP.failure(CommandError("QMP input member 'arguments' must be an object"), id: id), to: fd)
                return
            }
            arguments = o
        }
        lock.lock(); let negotiated = clients[fd] ?? false; lock.unlock()
        if command == "qmp_capabilities" {
            if negotiated {
                send(QMP.failure(CommandError("Capabilities negotiation is already complete, command ignored",
                                              class: "CommandNotFound"), id: id), to: fd)
            } else {
                lock.lock(); clients[fd] = true; lock.unlock()
                send(QMP.success(.object([:]), id: id), to: fd)
            }
            return
        }
        guard negotiated else {
            send(QMP.failure(CommandError("Expecting capabilities negotiation with 'qmp_capabilities'",
                                          class: "CommandNotFound"), id: id), to: fd)
            return
        }
        do {
            send(QMP.success(try handler(command, arguments), id: id), to: fd)
        } catch let e as CommandError {
            send(QMP.failure(e, id: id), to: fd)
        } catch {
            send(QMP.failure(CommandError("\(error)"), id: id), to: fd)
        }
    }

    private func send(_ value: JSONValue, to fd: Int32) {
        let data = Array((value.description + "\r\n").utf8)
        lock.lock()
        let writer = writeLocks[fd]
        lock.unlock()
        writer?.lock()
        defer { writer?.unlock() }
        // The client may have gone (and its number been closed) meanwhile.
        if writer != nil {
            lock.lock(); let live = writeLocks[fd] === writer; lock.unlock()
            guard live else { return }
        }
        var off = 0
        while off < data.count {
            let n = data[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                // A client that stopped reading (send timed out) or went away:
                // end its connection; its thread cleans up.
                shutdown(fd, Int32(SHUT_RDWR))
                return
            }
            off += n
        }
    }
}
