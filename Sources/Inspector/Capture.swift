import ControlProtocol

/// One model filled from a peer now, without a terminal: what `vmscope snapshot` prints.
public enum Capture {
    /// A vmscope VMM answers `query-snapshot` (one consistent cut); a stock QEMU is asked what QEMUPoller asks
    /// when it attaches.
    public static func model(_ client: ControlClient, faultLimit: Int = 256, nowNs: UInt64, timeoutMs: Int32 = 10_000)
        throws -> InspectorModel
    {
        var model = InspectorModel()
        model.connection = .connected(client.peer.name)
        switch client.peer {
        case .vmscope:
            model.apply(snapshot: StateSnapshot(json: try snapshotReply(client, faultLimit: faultLimit, timeoutMs: timeoutMs)))
        case .qemu:
            var source = QEMUPoller(greeting: client.greeting)
            try source.start({ name, args in try client.execute(name, args, timeoutMs: timeoutMs) }, model: &model, nowNs: nowNs,
                             pid: client.serverPID)
        }
        return model
    }

    /// A vmscope VMM's `query-snapshot` reply with the newest `faultLimit` fault records (what a recording
    /// starts from).
    public static func snapshotReply(_ client: ControlClient, faultLimit: Int, timeoutMs: Int32 = 10_000) throws -> JSON {
        let q = QuerySnapshot(faults: faultLimit)
        return try client.execute(QuerySnapshot.name.rawValue, q.arguments, timeoutMs: timeoutMs)
    }
}
