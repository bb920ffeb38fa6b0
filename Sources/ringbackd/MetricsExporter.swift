import BlockIO
import Foundation

/// Where the metrics go (README "Metrics and logs"): an HTTP endpoint for
/// Prometheus on loopback, a file for node_exporter's textfile collector, or
/// both. Each runs on its own thread and never holds a lock of the daemon for
/// longer than `DaemonMetrics.lockPatience`.
///
/// Made in two steps, so that a port in use or an unwritable folder stops
/// ringbackd before it loads any bitmap: `init` binds and checks, `start`
/// serves once the daemon runs, `stop` ends both and writes the file a last time.
final class MetricsExport: @unchecked Sendable {
    private let http: MetricsHTTPServer?
    private let textfile: MetricsTextfile?

    /// `listen` is HOST:PORT (nil or "" for none); a non-loopback host is
    /// refused unless `allowNonLoopback`. `textfile` is a path (nil or "" for none).
    init(listen: String?, allowNonLoopback: Bool, textfile: String?, interval: Double) throws {
        if let listen, !listen.isEmpty {
            http = try MetricsHTTPServer(address: try ListenAddress(parsing: listen, allowNonLoopback: allowNonLoopback))
        } else {
            http = nil
        }
        if let textfile, !textfile.isEmpty {
            guard interval > 0 else { throw MetricsError("--metrics-textfile-interval must be positive, got \(interval)") }
            self.textfile = try MetricsTextfile(path: textfile, interval: interval)
        } else {
            self.textfile = nil
        }
    }

    /// The port the HTTP endpoint listens on (the chosen one, for port 0).
    var httpPort: UInt16? { http?.port }

    func start(daemon: Daemon) {
        // The job list is a lazy property: made here, on this thread, and not
        // by two exporter threads at once.
        _ = daemon.jobs
        let render: @Sendable () -> String = { [weak daemon] in DaemonMetrics.shared.exposition(of: daemon) }
        if let http {
            http.start(render: render)
            logger.info("metrics on http://\(http.address.display(port: http.port))/metrics",
                        metadata: ["listen": "\(http.address.display(port: http.port))"])
        }
        if let textfile {
            textfile.start(render: render)
            logger.info("metrics written to \(textfile.path) every \(textfile.interval) s", metadata: ["textfile": "\(textfile.path)"])
        }
    }

    func stop() {
        http?.stop()
        textfile?.stop()
    }
}

/// A metrics option that cannot be honoured: says which and why.
struct MetricsError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Listen address

/// A HOST:PORT for the HTTP endpoint: `127.0.0.1:9469`, `[::1]:9469`,
/// `localhost:9469`. Port 0 takes any free port (logged at start).
struct ListenAddress {
    let text: String
    let host: String
    let port: UInt16
    /// The resolved socket address.
    let storage: sockaddr_storage
    let length: socklen_t

    init(parsing text: String, allowNonLoopback: Bool) throws {
        self.text = text
        let hostPart: Substring, portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw MetricsError("--metrics-listen '\(text)': expected [IPV6]:PORT, e.g. [::1]:9469")
            }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw MetricsError("--metrics-listen '\(text)': expected HOST:PORT, e.g. 127.0.0.1:9469")
            }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty else {
            throw MetricsError("--metrics-listen '\(text)': the host is missing; give a loopback address, e.g. 127.0.0.1:9469")
        }
        guard let port = UInt16(portPart) else {
            throw MetricsError("--metrics-listen '\(text)': the port '\(portPart)' is not a number from 0 to 65535")
        }
        host = String(hostPart)
        self.port = port

        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw MetricsError("--metrics-listen '\(text)': cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        // Every address the name stands for must be loopback: one that is not
        // would put an unauthenticated endpoint on the network.
        var chosen: UnsafeMutablePointer<addrinfo>?
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let e = entry {
            if let addr = e.pointee.ai_addr {
                if !Self.isLoopback(addr) && !allowNonLoopback {
                    throw MetricsError("""
                        --metrics-listen '\(text)': \(Self.numeric(addr)) is not a loopback address; the metrics \
                        endpoint has no authentication, so ringbackd serves it on loopback only (127.0.0.0/8 or ::1). \
                        Scrape it through a local agent, or pass --metrics-allow-non-loopback to serve it on \
                        \(Self.numeric(addr)) anyway (behind a firewall)
                        """)
                }
                if chosen == nil { chosen = e }
            }
            entry = e.pointee.ai_next
        }
        guard let chosen, let addr = chosen.pointee.ai_addr else {
            throw MetricsError("--metrics-listen '\(text)': '\(host)' resolves to no address")
        }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: addr, count: Int(chosen.pointee.ai_addrlen)))
        }
        self.storage = storage
        length = chosen.pointee.ai_addrlen
    }

    var family: Int32 { Int32(storage.ss_family) }

    /// host:port as a URL authority.
    func display(port: UInt16) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    static func isLoopback(_ addr: UnsafePointer<sockaddr>) -> Bool {
        switch Int32(addr.pointee.sa_family) {
        case AF_INET:
            let a = addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
            return a >> 24 == 127
        case AF_INET6:
            let bytes = addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
            }
            if bytes == Array(repeating: 0, count: 15) + [1] { return true }                          // ::1
            return bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff && bytes[12] == 127   // ::ffff:127.x
        default:
            return false
        }
    }

    static func numeric(_ addr: UnsafePointer<sockaddr>) -> String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let len = socklen_t(Int32(addr.pointee.sa_family) == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        guard getnameinfo(addr, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { return "?" }
        return String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

// MARK: - HTTP endpoint

/// A minimal HTTP/1.1 responder for Prometheus: `GET /metrics` (and HEAD)
/// gets the exposition, any other path 404, any other method 405; one
/// request per connection. Connections are served one at a time on the
/// server's own thread, each bounded by `clientTimeout`, so a slow or stuck
/// client delays the next scrape at most that long and never the daemon.
final class MetricsHTTPServer: @unchecked Sendable {
    let address: ListenAddress
    private(set) var port: UInt16
    private let listenFD: Int32
    private let wake: (read: Int32, write: Int32)
    private let finished = DispatchSemaphore(value: 0)
    private var started = false
    static let clientTimeout = 5.0
    static let maxRequestHead = 8192

    /// Binds and listens; throws with the address and errno when it cannot.
    init(address: ListenAddress) throws {
        self.address = address
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MetricsError("\(SystemError(errno: errno, "open a socket for metrics on \(address.text)"))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var storage = address.storage
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, address.length) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            throw MetricsError("\(SystemError(errno: e, "listen on \(address.text) for metrics (--metrics-listen)"))")
        }
        var actual = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let family = Int32(actual.ss_family)
        port = withUnsafePointer(to: &actual) { p -> UInt16 in
            switch family {
            case AF_INET6: p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            default: p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }
        }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            close(fd)
            throw MetricsError("\(SystemError(errno: errno, "make the metrics server's wake pipe"))")
        }
        for f in fds { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        listenFD = fd
        wake = (fds[0], fds[1])
    }

    deinit {
        close(listenFD)
        close(wake.read)
        close(wake.write)
    }

    func start(render: @escaping @Sendable () -> String) {
        started = true
        let thread = Thread { [self] in
            serve(render)
            finished.signal()
        }
        thread.name = "ringbackd-metrics-http"
        thread.start()
    }

    /// Ends the thread after the connection it serves, if any.
    func stop() {
        guard started else { return }
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
        finished.wait()
        started = false
    }

    private func serve(_ render: () -> String) {
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { return }
            guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
            let client = accept(listenFD, nil, nil)
            guard client >= 0 else { continue }   // the client went away already, or out of fds for a moment
            // Hooks that ringbackd starts must not hold a scrape open.
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            answer(client, render)
            close(client)
        }
    }

    /// Reads one request head and answers it.
    private func answer(_ fd: Int32, _ render: () -> String) {
        let deadline = monotonicNow() + Self.clientTimeout
        var head = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 2048)
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while !head.contains(end) {
            guard head.count <= Self.maxRequestHead else {
                return respond(fd, status: "431 Request Header Fields Too Large", body: "request head over \(Self.maxRequestHead) bytes\n", deadline: deadline)
            }
            guard Self.waitReadable(fd, until: deadline) else { return }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            head += buffer[0..<n]
        }
        let request = HTTPRequestLine(head)
        switch request {
        case .malformed:
            respond(fd, status: "400 Bad Request", body: "expected an HTTP/1.x request line\n", deadline: deadline)
        case .request(let method, let path):
            guard path == "/metrics" else {
                return respond(fd, status: "404 Not Found", body: "not found: the metrics are at /metrics\n", deadline: deadline)
            }
            guard method == "GET" || method == "HEAD" else {
                return respond(fd, status: "405 Method Not Allowed", extra: "Allow: GET, HEAD\r\n",
                               body: "only GET and HEAD\n", deadline: deadline)
            }
            respond(fd, status: "200 OK", contentType: "text/plain; version=0.0.4; charset=utf-8",
                    body: render(), headOnly: method == "HEAD", deadline: deadline)
        }
    }

    private func respond(_ fd: Int32, status: String, contentType: String = "text/plain; charset=utf-8", extra: String = "",
                         body: String, headOnly: Bool = false, deadline: Double) {
        let bytes = Array(body.utf8)
        var out = Array("""
            HTTP/1.1 \(status)\r
            Content-Type: \(contentType)\r
            Content-Length: \(bytes.count)\r
            Connection: close\r
            \(extra)\r

            """.utf8)
        if !headOnly { out += bytes }
        var timeout = timeval(tv_sec: Int(Self.clientTimeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var done = 0
        while done < out.count && monotonicNow() < deadline + Self.clientTimeout {
            let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            done += n
        }
        // A lingering close: closing with unread input would reset the
        // connection and could cut the answer short at the client.
        shutdown(fd, Int32(SHUT_WR))
        var sink = [UInt8](repeating: 0, count: 512)
        let lingerUntil = monotonicNow() + 1
        while Self.waitReadable(fd, until: lingerUntil),
              sink.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
    }

    private static func waitReadable(_ fd: Int32, until deadline: Double) -> Bool {
        while true {
            let left = deadline - monotonicNow()
            guard left > 0 else { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, Int32(left * 1000) + 1)
            if n < 0 && errno == EINTR { continue }
            return n > 0
        }
    }
}

/// The part of a request the endpoint looks at.
enum HTTPRequestLine: Equatable {
    case request(method: String, path: String)
    case malformed

    init(_ head: [UInt8]) {
        // Bytes, not Characters: "\r\n" is one Character in Swift.
        let line = String(decoding: head.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1."), !parts[0].isEmpty, parts[1].hasPrefix("/") else {
            self = .malformed
            return
        }
        let path = parts[1].prefix { $0 != "?" && $0 != "#" }
        self = .request(method: String(parts[0]), path: String(path))
    }
}

// MARK: - Textfile

/// The metrics as a file for node_exporter's textfile collector, replaced
/// every `interval` seconds and at stop: written to PATH.tmp, then renamed
/// over PATH, so the collector reads either the old file or the new one,
/// never half of one. (The collector reads only `*.prom`, so it never reads
/// the temporary file.) Not fsynced: after a crash a stale or empty file is
/// as good as any, and its mtime tells node_exporter's users its age.
final class MetricsTextfile: @unchecked Sendable {
    let path: String
    let interval: Double
    private let condition = NSCondition()
    private var stopping = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var render: (@Sendable () -> String)?
    /// The last failure logged, so a folder that stays unwritable is logged once.
    private var lastError: String?

    var temporaryPath: String { path + ".tmp" }

    /// Checks that the file's folder exists and takes a file of ours.
    init(path: String, interval: Double) throws {
        self.path = path
        self.interval = interval
        let dir = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw MetricsError("--metrics-textfile \(path): the folder \(dir) does not exist (node_exporter's textfile "
                               + "collector folder, e.g. /var/lib/prometheus/node-exporter)")
        }
        // The folder takes our temporary file (PATH itself is left as it is
        // until the first export).
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MetricsError("--metrics-textfile \(path): \(SystemError(errno: errno, "create \(temporaryPath)"))")
        }
        close(fd)
        unlink(temporaryPath)
        if !path.hasSuffix(".prom") {
            logger.warning("--metrics-textfile \(path) does not end in .prom: node_exporter's textfile collector reads only *.prom files",
                           metadata: ["textfile": "\(path)"])
        }
    }

    func start(render: @escaping @Sendable () -> String) {
        self.render = render
        writeNow()
        let t = Thread { [self] in
            run()
            finished.signal()
        }
        t.name = "ringbackd-metrics-textfile"
        thread = t
        t.start()
    }

    /// Ends the thread and writes the file a last time (the state at shutdown).
    func stop() {
        guard thread != nil else { return }
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        finished.wait()
        thread = nil
        writeNow()
    }

    private func run() {
        condition.lock()
        defer { condition.unlock() }
        while !stopping {
            if condition.wait(until: Date().addingTimeInterval(interval)) { continue }
            if stopping { break }
            condition.unlock()
            writeNow()
            condition.lock()
        }
    }

    private func writeNow() {
        guard let render else { return }
        do {
            try write(render())
            if lastError != nil {
                logger.info("metrics textfile \(path) written again", metadata: ["textfile": "\(path)"])
                lastError = nil
            }
        } catch {
            let text = "\(error)"
            if text != lastError { logger.error("metrics textfile: \(text)", metadata: ["textfile": "\(path)"]) }
            lastError = text
        }
    }

    /// Writes `text` to the temporary file and renames it over the file.
    private func write(_ text: String) throws {
        let tmp = temporaryPath
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError(errno: errno, "create \(tmp)") }
        // Readable by node_exporter's user whatever ringbackd's umask.
        fchmod(fd, 0o644)
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                let e = n < 0 ? errno : ENOSPC
                close(fd)
                unlink(tmp)
                throw SystemError(errno: e, "write \(tmp)")
            }
            done += n
        }
        guard close(fd) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError(errno: e, "write \(tmp)")
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError(errno: e, "rename \(tmp) to \(path)")
        }
    }
}
