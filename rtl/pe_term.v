// pe_term.v -- the value one PE adds to its accumulator, reduced modulo 2^ACC_W.
// Mirrors hw_models.engines.pe_array.pe_term followed by wrap(., ACC_W).
`default_nettype none
module pe_term #(
    parameter integer PE_TYPE = 0,     // 0 mac, 1 shift, 2 adder
    parameter integer IN_W    = 8,
    parameter integer W_W     = 8,
    parameter integer ACC_W   = 32
) (
    input  wire [IN_W-1:0]  a,
    input  wire [W_W-1:0]   w,
    output wire [ACC_W-1:0] term
);
    generate
        if (PE_TYPE == 0) begin : g_mac
            localparam integer PW = IN_W + W_W;
            /* verilator lint_off WIDTHEXPAND */
            wire signed [PW-1:0] prod = $signed(a) * $signed(w);   // exact signed IN_W x W_W product
            /* verilator lint_on WIDTHEXPAND */
            pe_resize #(.IW(PW), .OW(ACC_W)) u_rs (.x(prod), .y(term));
        end else if (PE_TYPE == 1) begin : g_shift
            // {sign, amount}: value = (-1)^sign * 2^amount
            wire             sgn = w[W_W-1];
            wire [W_W-2:0]   amt = w[W_W-2:0];
            wire [ACC_W-1:0] a_ext;
            pe_resize #(.IW(IN_W), .OW(ACC_W)) u_rs (.x(a), .y(a_ext));
            wire [ACC_W-1:0] mag = a_ext << amt;
            assign term = sgn ? (~mag + {{(ACC_W-1){1'b0}}, 1'b1}) : mag;
        end else begin : g_adder
            localparam integer DW = ((IN_W > W_W) ? IN_W : W_W) + 1;
            wire signed [DW-1:0] a_x = {{(DW-IN_W){a[IN_W-1]}}, a};
            wire signed [DW-1:0] w_x = {{(DW-W_W){w[W_W-1]}}, w};
            wire signed [DW-1:0] d   = a_x - w_x;                // exact: DW = max width + 1
            wire        [DW-1:0] nabs = d[DW-1] ? d : (~d + {{(DW-1){1'b0}}, 1'b1});   // -|d|
            pe_resize #(.IW(DW), .OW(ACC_W)) u_rs (.x(nabs), .y(term));
        end
    endgenerate
endmodule
`default_nettype wire
