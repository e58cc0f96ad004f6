// pe_resize.v -- two's-complement resize: sign-extend (OW > IW) or wrap (OW <= IW) a vector.
`default_nettype none
module pe_resize #(
    parameter integer IW = 16,
    parameter integer OW = 32
) (
    /* verilator lint_off UNUSEDSIGNAL */    // a wrap drops the upper IW-OW bits
    input  wire [IW-1:0] x,
    /* verilator lint_on UNUSEDSIGNAL */
    output wire [OW-1:0] y
);
    generate
        if (OW > IW) begin : g_ext
            assign y = {{(OW-IW){x[IW-1]}}, x};
        end else begin : g_wrap
            assign y = x[OW-1:0];
        end
    endgenerate
endmodule
`default_nettype wire
