import BlockIO

/// What identifies the device a persistent bitmap was recording, so that a
/// bitmap is never applied to another device (DESIGN §6).
public struct DeviceIdentity: Hashable, Sendable, CustomStringConvertible {
    /// dev_t of the whole disk (for a partition, of its parent disk).
    public var wholeDisk: UInt64
    /// Byte offset of the partition on the whole disk; 0 for a whole disk.
    public var partitionStart: UInt64
    /// Size of the device in bytes.
    public var size: UInt64
    /// The UUID of the file system on it, when it has one.
    public var filesystemUUID: String?
    /// A serial, WWN or, for a loop device, its backing file's identity: what tells
    /// apart two devices with the same number and size.
    public var serial: String?

    /// An identity; an empty file system UUID or serial counts as absent.
    public init(wholeDisk: UInt64, partitionStart: UInt64 = 0, size: UInt64, filesystemUUID: String? = nil, serial: String? = nil) {
        self.wholeDisk = wholeDisk
        self.partitionStart = partitionStart
        self.size = size
        self.filesystemUUID = filesystemUUID?.isEmpty == true ? nil : filesystemUUID
        self.serial = serial?.isEmpty == true ? nil : serial
    }

    public var description: String {
        // Linux's dev_t layout (include/linux/kdev_t.h, new_decode_dev).
        let major = (wholeDisk >> 8) & 0xfff | (wholeDisk >> 32) & ~0xfff
        let minor = wholeDisk & 0xff | (wholeDisk >> 12) & ~0xff
        var s = "disk \(major):\(minor), start \(partitionStart), \(size) bytes"
        if let filesystemUUID { s += ", file system \(filesystemUUID)" }
        if let serial { s += ", serial \(serial)" }
        return s
    }
}

/// A reason a loaded bitmap may have missed writes; any one makes it inconsistent.
public enum BitmapDoubt: Equatable, Sendable, CustomStringConvertible {
    /// The in-use flag was still set: the daemon holding it died.
    case leftInUse
    /// Saved under another boot: writes before this daemon started were not seen.
    case bootChanged(saved: String, current: String)
    /// Saved for another device.
    case deviceChanged(saved: DeviceIdentity, current: DeviceIdentity)
    /// The bits do not match their checksum or length.
    case damaged(String)
    /// It was inconsistent already when saved.
    case savedInconsistent

    public var description: String {
        switch self {
        case .leftInUse: "the daemon that held it did not shut down cleanly (its in-use flag is still set)"
        case .bootChanged(let saved, let current):
            "it was saved under boot \(saved) and this is boot \(current); writes made while no daemon ran were not seen"
        case .deviceChanged(let saved, let current): "it was saved for another device (\(saved); now \(current))"
        case .damaged(let why): "its bits are damaged (\(why))"
        case .savedInconsistent: "it was already inconsistent when it was saved"
        }
    }
}

/// A bitmap read from its file, with every reason to doubt it. It is
/// inconsistent exactly when `doubts` is not empty.
public struct LoadedBitmap: Sendable {
    /// The bitmap, persistent, marked inconsistent when there is any doubt.
    public var bitmap: DirtyBitmap
    /// Every reason to doubt it, in the order checked; empty when it is consistent.
    public var doubts: [BitmapDoubt]
    /// The identity and boot id recorded in the file.
    public var savedIdentity: DeviceIdentity
    public var savedBootID: String
}

/// A bitmap file that cannot be read or parsed, or a bitmap that cannot be saved.
public struct BitmapFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "bitmap file \(path) \(reason)" }
}

/// The on-disk form of a persistent bitmap.
///
/// Little-endian: magic "RBBITMAP"; version u32; flags u32 (1 in use, 2 enabled,
/// 4 inconsistent); granularity, generation, device size, whole-disk dev_t,
/// partition start and word count as u64; the byte lengths of the name, boot id,
/// file system UUID and serial as u16 (0 = absent); those strings, zero-padded to
/// a multiple of 8; CRC-32C of everything before it (the header) and CRC-32C of
/// the bits, as u32; then the bits as u64 words.
///
/// The header has its own checksum because a bitmap whose name or granularity
/// cannot be trusted cannot be loaded at all; damaged bits only make it inconsistent.
public enum BitmapFile {
    /// Where the daemon keeps persistent bitmaps.
    public static let directory = "/var/lib/ringback/bitmaps"
    static let magic = Array("RBBITMAP".utf8)
    static let version: UInt32 = 1
    static let fixedSize = 72
    static let flagsOffset = 12

    struct Flags: OptionSet {
        let rawValue: UInt32
        static let inUse = Flags(rawValue: 1)
        static let enabled = Flags(rawValue: 2)
        static let inconsistent = Flags(rawValue: 4)
        static let known: Flags = [.inUse, .enabled, .inconsistent]
    }

    struct Header {
        var flags: Flags
        var granularity, generation, wordCount: UInt64
        var identity: DeviceIdentity
        var name, bootID: String
        /// Offset of the bits; the two checksums are the 8 bytes before it.
        var size: Int
    }

    /// Sets or clears the in-use flag of a saved bitmap, atomically. The daemon
    /// sets it when it takes its bitmaps; a clean shutdown saves with it clear.
    public static func setInUse(_ inUse: Bool, at path: String) throws {
        var bytes = try FileIO.read(path)
        let h = try decodeHeader(bytes, path: path)
        let flags = inUse ? h.flags.union(.inUse) : h.flags.subtracting(.inUse)
        bytes.withUnsafeMutableBytes { p in
            p.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: flagsOffset, as: UInt32.self)
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: p[..<(h.size - 8)]))
            p.storeBytes(of: crc.littleEndian, toByteOffset: h.size - 8, as: UInt32.self)
        }
        try FileIO.replace(path, with: bytes)
    }

    static func encode(_ b: DirtyBitmap, identity: DeviceIdentity, bootID: String, flags: Flags,
                       generation: UInt64, path: String) throws(BitmapFileError) -> [UInt8] {
        let strings = [b.name, bootID, identity.filesystemUUID ?? "", identity.serial ?? ""].map { Array($0.utf8) }
        guard strings.allSatisfy({ $0.count <= Int(UInt16.max) }) else {
            throw BitmapFileError(path: path, reason: "cannot be written: the boot id, file system UUID or serial is longer than 65535 bytes")
        }
        let headerSize = (fixedSize + strings.reduce(0) { $0 + $1.count } + 7) / 8 * 8 + 8
        var out = [UInt8](repeating: 0, count: headerSize + 8 * b.words.count)
        out.withUnsafeMutableBytes { p in
            p.copyBytes(from: magic)
            p.storeBytes(of: version.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: flagsOffset, as: UInt32.self)
            for (i, v) in [b.granularity, generation, b.deviceSize, identity.wholeDisk, identity.partitionStart,
                           UInt64(b.words.count)].enumerated() {
                p.storeBytes(of: v.littleEndian, toByteOffset: 16 + 8 * i, as: UInt64.self)
            }
            var at = fixedSize
            for (i, s) in strings.enumerated() {
                p.storeBytes(of: UInt16(s.count).littleEndian, toByteOffset: 64 + 2 * i, as: UInt16.self)
                UnsafeMutableRawBufferPointer(rebasing: p[at..<(at + s.count)]).copyBytes(from: s)
                at += s.count
            }
            for (i, w) in b.words.enumerated() {
                p.storeBytes(of: w.littleEndian, toByteOffset: headerSize + 8 * i, as: UInt64.self)
            }
            let headerCRC = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: p[..<(headerSize - 8)]))
            let bitsCRC = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: p[headerSize...]))
            p.storeBytes(of: headerCRC.littleEndian, toByteOffset: headerSize - 8, as: UInt32.self)
            p.storeBytes(of: bitsCRC.littleEndian, toByteOffset: headerSize - 4, as: UInt32.self)
        }
        return out
    }

    /// Parses and checks the header; anything wrong with it is an error naming the path.
    static func decodeHeader(_ bytes: [UInt8], path: String) throws -> Header {
        func fail(_ reason: String) -> BitmapFileError { BitmapFileError(path: path, reason: reason) }
        guard bytes.count >= fixedSize + 8, Array(bytes[0..<8]) == magic else {
            throw fail("is not a ringback bitmap file (\(bytes.count < 8 ? "too short" : "wrong magic"))")
        }
        return try bytes.withUnsafeBytes { p in
            func u16(_ o: Int) -> Int { Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))) }
            func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
            guard u32(8) == version else { throw fail("has version \(u32(8)); this ringback reads version \(version)") }
            let lengths = (0..<4).map { u16(64 + 2 * $0) }
            let size = (fixedSize + lengths.reduce(0, +) + 7) / 8 * 8 + 8
            guard bytes.count >= size else { throw fail("is truncated inside its header") }
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: p[..<(size - 8)])) == u32(size - 8) else {
                throw fail("has a damaged header (checksum mismatch)")
            }
            var strings: [String] = []
            var at = fixedSize
            for n in lengths {
                guard let s = String(validating: p[at..<(at + n)], as: UTF8.self) else { throw fail("has a string that is not UTF-8") }
                strings.append(s)
                at += n
            }
            let flags = Flags(rawValue: u32(flagsOffset))
            guard Flags.known.isSuperset(of: flags) else { throw fail("has flags \(flags.rawValue) this ringback does not know") }
            let h = Header(flags: flags, granularity: u64(16), generation: u64(24), wordCount: u64(56),
                           identity: DeviceIdentity(wholeDisk: u64(40), partitionStart: u64(48), size: u64(32),
                                                    filesystemUUID: strings[2], serial: strings[3]),
                           name: strings[0], bootID: strings[1], size: size)
            do throws(BitmapError) {
                try DirtyBitmap.validate(name: h.name)
                try DirtyBitmap.validate(granularity: h.granularity, for: h.name)
            } catch { throw fail("holds an invalid bitmap: \(error.message)") }
            let granules = h.identity.size / h.granularity + (h.identity.size % h.granularity == 0 ? 0 : 1)
            guard h.wordCount == (granules + 63) / 64 else {
                throw fail("has \(h.wordCount) words of bits where \(h.identity.size) bytes at granularity \(h.granularity) need \((granules + 63) / 64)")
            }
            return h
        }
    }
}

extension DirtyBitmap {
    /// Saves the bitmap atomically (temporary file, fsync, rename, fsync of the
    /// directory) with the device's identity and the current boot id, then counts
    /// the save in `generation`. `inUse` is true while the daemon keeps holding it.
    public mutating func save(to path: String, identity: DeviceIdentity, bootID: String, inUse: Bool) throws {
        guard !name.isEmpty else {
            throw BitmapFileError(path: path, reason: "cannot be written: a successor has no name of its own")
        }
        guard identity.size == deviceSize else {
            throw BitmapFileError(path: path, reason: "cannot be written for bitmap '\(name)': it covers \(deviceSize) bytes but the device identity says \(identity.size)")
        }
        var flags: BitmapFile.Flags = []
        if inUse { flags.insert(.inUse) }
        if isEnabled { flags.insert(.enabled) }
        if isInconsistent { flags.insert(.inconsistent) }
        let bytes = try BitmapFile.encode(self, identity: identity, bootID: bootID, flags: flags,
                                          generation: generation + 1, path: path)
        try FileIO.replace(path, with: bytes)
        generation += 1
    }

    /// Loads a saved bitmap for the device `identity` under boot `bootID`. Any
    /// doubt makes it inconsistent, never silently consistent: the in-use flag
    /// still set, another boot, another device, damaged bits, or saved
    /// inconsistent. Damaged bits, or a device whose size changed, give a bitmap
    /// with every granule dirty. A file that cannot be parsed is an error naming
    /// its path.
    public static func load(from path: String, expecting identity: DeviceIdentity, bootID: String) throws -> LoadedBitmap {
        let bytes = try FileIO.read(path)
        let h = try BitmapFile.decodeHeader(bytes, path: path)
        var doubts: [BitmapDoubt] = []
        if h.flags.contains(.inUse) { doubts.append(.leftInUse) }
        if h.bootID != bootID { doubts.append(.bootChanged(saved: h.bootID, current: bootID)) }
        if h.identity != identity { doubts.append(.deviceChanged(saved: h.identity, current: identity)) }
        if h.flags.contains(.inconsistent) { doubts.append(.savedInconsistent) }

        var b = DirtyBitmap(unchecked: h.name, deviceSize: identity.size, granularity: h.granularity,
                            enabled: h.flags.contains(.enabled), persistent: true)
        b.generation = h.generation
        if let why = bitsDamage(bytes, header: h) {
            doubts.append(.damaged(why))
        }
        if h.identity.size == identity.size, !doubts.contains(where: { if case .damaged = $0 { true } else { false } }) {
            b.replaceWords(bytes.withUnsafeBytes { p in
                (0..<Int(h.wordCount)).map { UInt64(littleEndian: p.loadUnaligned(fromByteOffset: h.size + 8 * $0, as: UInt64.self)) }
            })
        } else {
            b.setAll()
        }
        if !doubts.isEmpty { b.markInconsistent() }
        return LoadedBitmap(bitmap: b, doubts: doubts, savedIdentity: h.identity, savedBootID: h.bootID)
    }

    /// Why the bits after a valid header cannot be trusted, or nil.
    private static func bitsDamage(_ bytes: [UInt8], header h: BitmapFile.Header) -> String? {
        let expected = h.size + 8 * Int(h.wordCount)
        guard bytes.count == expected else { return "the file has \(bytes.count) bytes where \(expected) were written" }
        return bytes.withUnsafeBytes { p -> String? in
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: p[h.size...]))
                    == UInt32(littleEndian: p.loadUnaligned(fromByteOffset: h.size - 4, as: UInt32.self)) else {
                return "checksum mismatch"
            }
            // Bits past the last granule must be zero (DirtyBitmap's invariant).
            let granules = Int(h.identity.size / h.granularity + (h.identity.size % h.granularity == 0 ? 0 : 1))
            guard granules % 64 != 0, h.wordCount > 0 else { return nil }
            let last = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: expected - 8, as: UInt64.self))
            return last >> UInt64(granules % 64) == 0 ? nil : "bits are set past the end of the device"
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by ext4 and
/// btrfs for metadata: it catches every burst error of up to 32 bits.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { (i: UInt32) in
        var c = i
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = ~0
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        }
        return ~c
    }
}
