// Binary frame decoding: 20-byte header, overlay JSON, encoded image (docs/protocol.md).
const gettext = window.gettext || ((text) => text);  // Django's JavaScript catalogue, where the page has it
const MAGIC = "FGF1";
const HEADER_BYTES = 20;
const MIME = { 1: "image/jpeg", 2: "image/png", 3: "image/webp" };

export function decodeFrame(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== MAGIC || view.getUint8(4) !== 1) {
    throw new Error(gettext("not a Fusion Gateway frame"));
  }
  const overlayLength = view.getUint32(16);
  const overlayBytes = new Uint8Array(buffer, HEADER_BYTES, overlayLength);
  return {
    view: view.getUint8(5),
    quality: view.getUint8(6) === 1 ? "still" : "interactive",
    encoding: view.getUint8(7),
    sequence: view.getUint32(8),
    width: view.getUint16(12),
    height: view.getUint16(14),
    overlay: JSON.parse(new TextDecoder().decode(overlayBytes)),
    image: new Blob([new Uint8Array(buffer, HEADER_BYTES + overlayLength)],
                    { type: MIME[view.getUint8(7)] || "application/octet-stream" }),
  };
}
