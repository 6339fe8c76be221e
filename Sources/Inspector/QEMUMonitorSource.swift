import Foundation
import ControlProtocol

/// A stock QEMU's QMP monitor: `QEMUPoller` polls it; actions map onto QEMU's own commands where it has one.
public final class QEMUMonitorSource: ClientBackedSource {
    public let client: ControlClient
    public var qemu: QEMUPoller
    public var timeoutMs: Int32 = 5000

    public init(client: ControlClient) {
        self.client = client
        qemu = QEMUPoller(greeting: client.greeting)
    }

    var execute: QEMUPoller.Execute {
        let c = client, t = timeoutMs
        return { name, args in try c.execute(name, args, timeoutMs: t) }
    }

    public func start(_ model: inout InspectorModel, nowNs: UInt64) throws {
        try qemu.start(execute, model: &model, nowNs: nowNs, pid: client.serverPID)
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        (try? pollThrowing(&model, nowNs: nowNs)) ?? true
    }

    func pollThrowing(_ model: inout InspectorModel, nowNs: UInt64) throws -> Bool {
        var n = 0
        while n < 10_000, let e = client.nextItem(timeoutMs: 0) {
            let event = e.event
            model.apply(event: event, nowNs: nowNs)
            qemu.apply(event: event, model: &model)
            n += 1
        }
        if !client.isConnected { throw ControlClientError.connection("QEMU went away") }
        return try qemu.poll(execute, model: &model, nowNs: nowNs) || n > 0
    }

    public func refusal(_ action: InspectorAction) -> String? {
        if case .refuse(let why) = qemu.translate(action) { return why }
        return nil
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        switch qemu.translate(action) {
        case .refuse(let why): throw SourceRefusal(why)
        case .readMemory(let gpa, let size): return .bytes(try qemu.readMemory(execute, gpa: gpa, size: size))
        case .run(let name, let arguments, let description):
            try client.execute(name, arguments, timeoutMs: 10_000)
            qemu.refreshSoon()
            return .done(detail: "", description: description)
        }
    }

    public var recordingSocket: Result<String, SourceRefusal> {
        .failure(SourceRefusal("this is \(QEMUPoller.recorderRefusal)"))
    }
}
