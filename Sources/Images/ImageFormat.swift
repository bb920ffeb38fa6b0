/// The on-disk formats ringback reads and writes (DESIGN §8).
public enum ImageFormat: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// A plain byte-for-byte copy: a sparse file or a block device.
    case raw
    /// QEMU copy-on-write v2/v3 (docs/interop/qcow2.txt).
    case qcow2

    public var description: String { rawValue }
}
