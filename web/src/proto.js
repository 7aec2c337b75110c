// The imchat.v1 protocol (SPEC 3.1), compiled from proto/imchat/v1/im.proto
// by build.mjs (pbjs static module), with helpers for the frames.
import { imchat } from 'imchat-proto';

export const pb = imchat.v1;
export const DeliveryState = pb.DeliveryStatus.State;
export const ErrorCode = pb.Error.Code;

export function encodeClientFrame(obj) {
  return pb.ClientFrame.encode(pb.ClientFrame.create(obj)).finish();
}

export function decodeServerFrame(buf) {
  return pb.ServerFrame.decode(new Uint8Array(buf));
}

// A Message as the page keeps it: plain fields, numbers, text body.
const utf8 = new TextDecoder();
export function messageFromProto(m) {
  return {
    msg_id: m.msg_id,
    conversation_id: m.conversation_id,
    seq: Number(m.seq),
    from_user: m.from_user,
    to_user: m.to_user,
    group_id: m.group_id,
    body: utf8.decode(m.body || new Uint8Array()),
    content_type: m.content_type,
    sent_at_ms: Number(m.sent_at_ms),
    client_msg_id: m.client_msg_id,
  };
}

// The same from a JSON page of GET /offline or history (body base64).
export function messageFromJson(m) {
  const bin = atob(m.body || '');
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return {
    msg_id: m.msg_id,
    conversation_id: m.conversation_id,
    seq: Number(m.seq || 0),
    from_user: m.from_user || '',
    to_user: m.to_user || '',
    group_id: m.group_id || '',
    body: utf8.decode(bytes),
    content_type: m.content_type || '',
    sent_at_ms: Number(m.sent_at_ms || 0),
    client_msg_id: m.client_msg_id || '',
  };
}

// Conversation ids (SPEC 3.1): p:<a>:<b> in byte order, g:<group>.
export function conversationId(me, peer, isGroup) {
  if (isGroup) return `g:${peer}`;
  return me < peer ? `p:${me}:${peer}` : `p:${peer}:${me}`;
}
