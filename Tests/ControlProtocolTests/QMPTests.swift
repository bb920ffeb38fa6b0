import Foundation
import Testing
import TestSupport
@testable import ControlProtocol

@Suite struct JSONStreamSplitterTests {
    @Test func splitsObjectsAcrossAndWithinReads() throws {
        var s = JSONStreamSplitter()
        let text = #"{"execute": "a", "arguments": {"x": "}{\"]"}} {"execute":"b"}"# + "\n" + #"{"id": [1, {"y": 2}]}"#
        let bytes = Array(text.utf8)
        var out: [Data] = []
        // Feed one byte at a time: a message may arrive in any pieces.
        for b in bytes { out += try s.feed([b]) }
        #expect(out.count == 3)
        #expect(try JSONValue.parse(out[0])["arguments"]?["x"] == .string("}{\"]"))
        #expect(try JSONValue.parse(out[2])["id"] == .array([.int(1), .object(["y": .int(2)])]))
    }

    @Test func refusesOversizedAndNonObjectInput() {
        var s = JSONStreamSplitter(limit: 16)
        #expect(throws: JSONStreamSplitter.SplitError.tooLarge(16)) { try s.feed(Array(#"{"a": "0123456789abcdef"}"#.utf8)) }
        var t = JSONStreamSplitter()
        #expect(throws: JSONStreamSplitter.SplitError.unexpected(UInt8(ascii: "x"))) { try t.feed(Array("x".utf8)) }
    }

    /// Complete messages written in the same go as a framing error are still
    /// delivered, before the error (the fuzz test found them dropped).
    @Test(arguments: [("[", JSONStreamSplitter.SplitError.unexpected(UInt8(ascii: "["))),
                      (#"{"pad": "0123456789abcdef0123456789"}"#, .tooLarge(32))])
    func objectsBeforeAFramingErrorAreKept(bad: String, failure: JSONStreamSplitter.SplitError) {
        var s = JSONStreamSplitter(limit: 32)
        let (objects, found) = s.split(Array((#"{"id": 1} {"id": 2}"# + bad).utf8))
        #expect(objects.map { String(decoding: $0, as: UTF8.self) } == [#"{"id": 1}"#, #"{"id": 2}"#])
        #expect(found == failure)
    }
}

/// The server and client over a real Unix socket.
@Suite struct QMPServerTests {
    func withServer(_ body: (String, QMPServer) throws -> Void) throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("qmp.sock")
        let server = QMPServer(path: path, greeting: QMP.greeting(major: 0, minor: 1, micro: 0, package: "test")) { command, args in
            switch command {
            case "echo": return .object(args)
            case "big": return .string(String(repeating: "x", count: 4 << 20))
            case "fail": throw CommandError("it failed as asked")
            default: throw CommandError.commandNotFound(command)
            }
        }
        try server.start()
        defer { server.stop() }
        try body(path, server)
    }

    @Test func greetingNegotiationCommandsAndErrors() throws {
        try withServer { path, _ in
            let client = try QMPClient(path: path)
            #expect(client.greeting["QMP"]?["capabilities"] == .array([]))
            #expect(try client.execute("echo", ["a": .int(1)]) == .object(["a": .int(1)]))
            let failed = #expect(throws: CommandError.self) { try client.execute("fail") }
            #expect(failed == CommandError("it failed as asked"))
            let unknown = #expect(throws: CommandError.self) { try client.execute("no-such-command") }
            #expect(unknown?.errorClass == "CommandNotFound")
            let again = #expect(throws: CommandError.self) { try client.execute("qmp_capabilities") }
            #expect(again?.desc.contains("already complete") == true)
        }
    }

    @Test func socketIsPrivateAndBadInputDoesNotKillTheServer() throws {
        try withServer { path, _ in
            var st = stat()
            stat(path, &st)
            #expect(st.st_mode & 0o777 == 0o600)
            // Garbage, a command before negotiation, and an oversized message, each on its own connection.
            let raw = try Shell.run(["python3", "-c", """
                import socket, json
                def talk(payload):
                    s = socket.socket(socket.AF_UNIX); s.connect('\(path)'); f = s.makefile('rb')
                    f.readline()
                    s.sendall(payload); line = f.readline(); s.close(); return line.decode()
                print(talk(b'{"execute": "echo"}\\n'))
                print(talk(b'not json at all\\n'))
                print(talk(b'{"execute": "x", "arguments": "' + b'a' * (2 << 20) + b'"}'))
                """])
            #expect(raw.stdout.contains("Expecting capabilities negotiation"))
            #expect(raw.stdout.contains("JSON parse error"))
            #expect(raw.stdout.contains("larger than"))
            // Still serving.
            #expect(try QMPClient(path: path).execute("echo") == .object([:]))
        }
    }

    @Test func eventsReachEveryNegotiatedClient() throws {
        try withServer { path, server in
            let a = try QMPClient(path: path), b = try QMPClient(path: path)
            server.broadcast(event: "TEST_EVENT", data: .object(["n": .int(7)]))
            for c in [a, b] {
                let e = try c.nextEvent()
                #expect(e["event"] == .string("TEST_EVENT"))
                #expect(e["data"]?["n"] == .int(7))
                #expect(e["timestamp"]?["seconds"]?.intValue ?? 0 > 0)
            }
        }
    }

    /// A reply and events written at the same moment from different threads
    /// reach the client whole, one after the other, never spliced together.
    @Test func eventsDoNotSpliceIntoALargeReply() throws {
        try withServer { path, server in
            var client: QMPClient? = try QMPClient(path: path)
            let ticking = Flag(), done = DispatchSemaphore(value: 0)
            // 3,000 events of 2 KiB: well within what a client may leave unread.
            Thread {
                for _ in 0..<3000 where ticking.isRaised {
                    server.broadcast(event: "TEST_TICK", data: .object(["pad": .string(String(repeating: "e", count: 2048))]))
                }
                done.signal()
            }.start()
            defer {
                ticking.lower()
                client = nil
                done.wait()
            }
            for _ in 0..<5 {
                let reply = try client!.execute("big")
                #expect(reply.stringValue?.count == 4 << 20)
                #expect(reply.stringValue?.allSatisfy { $0 == "x" } == true)
            }
            #expect(client!.events.allSatisfy { $0["event"] == .string("TEST_TICK") })
        }
    }

    /// A client that stops reading holds up no one for good: broadcast
    /// returns, a reading client gets every event, and the stalled client is
    /// disconnected. 16 MiB of events is far more than any socket buffers.
    @Test func aClientThatStopsReadingHoldsUpNoOne() throws {
        try withServer { path, server in
            let stalled = try QMPClient(path: path)          // negotiated, then reads nothing
            nonisolated(unsafe) let reader = try QMPClient(path: path)
            let pad = String(repeating: "s", count: 64 << 10)
            let count = (16 << 20) / pad.utf8.count
            // The flood keeps at most 32 events ahead of the reader, so only
            // the stalled client can fall behind by the limit.
            let received = DispatchSemaphore(value: 32), flooded = DispatchSemaphore(value: 0), read = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var inOrder = 0
            Thread {
                for i in 0..<count {
                    received.wait()
                    server.broadcast(event: "TEST_FLOOD", data: .object(["i": .int(Int64(i)), "pad": .string(pad)]))
                }
                flooded.signal()
            }.start()
            Thread {
                for i in 0..<count {
                    guard let event = try? reader.nextEvent(), event["data"]?["i"] == .int(Int64(i)) else { break }
                    inOrder += 1
                    received.signal()
                }
                read.signal()
            }.start()
            // Only a guard against hanging the run: a blocked broadcast never returns.
            let floodReturned = flooded.wait(timeout: .now() + 300) == .success
            #expect(floodReturned, "broadcast blocked on the client that stopped reading")
            guard floodReturned else { return }      // stopping the server unblocks the threads
            read.wait()
            #expect(inOrder == count, "the reading client got \(inOrder) of \(count) events in order")
            var stalledGot = 0
            let cutOff = #expect(throws: CommandError.self) { while true { _ = try stalled.nextEvent(); stalledGot += 1 } }
            #expect(cutOff?.desc.contains("closed the connection") == true)
            #expect(stalledGot < count)
            #expect(try QMPClient(path: path).execute("echo") == .object([:]))
        }
    }

    @Test func aSecondServerOnALiveSocketIsRefused() throws {
        try withServer { path, _ in
            let second = QMPServer(path: path, greeting: .object([:])) { _, _ in .null }
            #expect(throws: CommandError.self) { try second.start() }
        }
    }
}

/// A flag one thread lowers and another reads.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = true
    var isRaised: Bool { lock.withLock { raised } }
    func lower() { lock.withLock { raised = false } }
}
