import ControlProtocol

/// One model filled from a peer now, without a terminal: what `vmscope snapshot` prints and what a recording
/// starts from.
public enum Capture {
    /// A vmscope VMM answers `query-snapshot` (one consistent cut; `raw` is its reply); a stock QEMU is asked what
    /// QEMUSource asks when it attaches (`raw` is nil: there is no single reply to keep).
    public static func model(_ client: ControlClient, faultLimit: Int = 256, nowNs: UInt64, timeoutMs: Int32 = 10_000)
        throws -> (model: InspectorModel, raw: JSON?)
    {
        var model = InspectorModel()
        switch client.peer {
        case .vmscope(_, let package):
            let raw = try client.execute("query-snapshot", .object([("faults", .i(faultLimit))]), timeoutMs: timeoutMs)
            model.connection = .connected(package)
            model.apply(snapshot: raw)
            return (model, raw)
        case .qemu:
            var source = QEMUSource(greeting: client.greeting)
            try source.start({ name, args in try client.execute(name, args, timeoutMs: timeoutMs) }, model: &model, nowNs: nowNs)
            model.connection = .connected(source.versionText)
            return (model, nil)
        }
    }
}
