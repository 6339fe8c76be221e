import NIOCore
import NIOHTTP1

/// HTTP/1.0 as HTTP says: a request without `Connection: keep-alive` (and an HTTP/1.1 one with `Connection: close`,
/// however it is capitalised) ends its connection once answered. Hummingbird reads only an exact `close` in the
/// request's headers and has no word of the version, so a plain `GET /metrics HTTP/1.0` (curl -0, many probes) was
/// held open until the 10 s idle timeout, a slot of the 64 each. This handler sits right after NIO's HTTP decoder,
/// where the version is still known, and spells the request's wish the way Hummingbird reads it.
final class HTTPVersionKeepAlive: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data), !head.isKeepAlive else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    /// Puts one right after the pipeline's HTTP request decoder; false where there is none (nothing is changed).
    static func install(in pipeline: ChannelPipeline.SynchronousOperations) -> Bool {
        guard let decoder = try? pipeline.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self) else { return false }
        return (try? pipeline.addHandler(HTTPVersionKeepAlive(), position: .after(decoder.handler))) != nil
    }
}
