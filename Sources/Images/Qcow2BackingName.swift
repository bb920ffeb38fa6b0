import BlockIO

/// Changes the backing file name recorded in a qcow2 overlay, atomically:
/// after a crash the overlay names either the old backing file or the new one,
/// never a mix (how a chain is re-linked when an image below it goes away).
public enum Qcow2BackingName {
    /// Points `image` at `name` (as stored: relative to the image's folder,
    /// or absolute). The backing format extension is kept.
    ///
    /// The header fields backing_file_offset (bytes 8–15) and
    /// backing_file_size (16–19) lie in the first sector. When the new name
    /// fits in that sector where the old one starts, one sector write changes
    /// both. Otherwise the name is first written to unused space of the header
    /// cluster and fsynced, and then one sector write switches the fields to it.
    public static func rewrite(image: String, to name: String) throws {
        let bytes = Array(name.utf8)
        guard (1...1023).contains(bytes.count) else {
            throw MergeError("cannot point \(image) at a backing file name of \(bytes.count) bytes (1 to 1023 are allowed)")
        }
        let file = try BlockFile(path: image, mode: .write, direct: false)
        let metadata: Qcow2Metadata
        do { metadata = try Qcow2Metadata(file: file) } catch let e as ImageFormatError { throw e.inImage(image) }
        let h = metadata.header
        guard metadata.backingFile != nil, h.backingFileOffset != 0 else {
            throw MergeError("\(image) has no backing file to replace")
        }
        let cs = h.clusterSize
        var cluster = [UInt8](repeating: 0, count: min(cs, Int(file.size)))
        _ = try cluster.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: $0.count, at: 0) }

        var offset = Int(h.backingFileOffset)
        if offset < extensionsEnd(h, cluster) || offset + bytes.count > 512 {
            // Past everything the header cluster holds now.
            offset = (max(extensionsEnd(h, cluster), Int(h.backingFileOffset) + Int(h.backingFileSize)) + 7) / 8 * 8
            guard offset + bytes.count <= cs else {
                throw MergeError("the backing file name '\(name)' does not fit in the header cluster of \(image)")
            }
            if offset + bytes.count > 512 {
                try bytes.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: $0.count, at: UInt64(offset)) }
                try file.sync()
            }
        }
        var sector = Array(cluster.prefix(512))
        sector += [UInt8](repeating: 0, count: 512 - sector.count)
        sector.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt64(offset).bigEndian, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: UInt32(bytes.count).bigEndian, toByteOffset: 16, as: UInt32.self)
        }
        // The part of the name inside the first sector goes with the switch.
        if offset < 512 {
            let inSector = min(512, offset + bytes.count) - offset
            sector.replaceSubrange(offset..<(offset + inSector), with: bytes[..<inSector])
        }
        try sector.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: 512, at: 0) }
        try file.sync()

        let check = try Qcow2Metadata(file: BlockFile(path: image, mode: .read, direct: false))
        guard check.backingFile == name else {
            throw MergeError("\(image) names '\(check.backingFile ?? "nothing")' as its backing file after it was pointed at '\(name)'")
        }
    }

    /// The backing file name of `image` as stored, or nil (reads the header cluster only).
    public static func read(image: String) throws -> String? {
        let file = try BlockFile(path: image, mode: .read, direct: false)
        do { return try Qcow2Metadata(file: file).backingFile } catch let e as ImageFormatError { throw e.inImage(image) }
    }

    /// Where the header extensions end (after the end marker), from the end
    /// of the fixed header.
    private static func extensionsEnd(_ h: Qcow2Header, _ bytes: [UInt8]) -> Int {
        func be32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3])
        }
        var offset = h.version >= 3 ? Int(h.headerLength) : 72
        while offset + 8 <= bytes.count {
            let type = be32(offset), length = Int(be32(offset + 4))
            offset += 8
            if type == Qcow2Header.Extension.end { break }
            offset += (length + 7) / 8 * 8
        }
        return min(offset, bytes.count)
    }
}
