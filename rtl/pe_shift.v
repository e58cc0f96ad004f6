// pe_shift.v -- thin wrapper: a PE of type pe_shift (pe.v with PE_TYPE=1), synthesizable alone for area.
`default_nettype none
module pe_shift #(
    parameter integer IN_W  = 8,
    parameter integer W_W   = 5,
    parameter integer ACC_W = 32,
    parameter integer PIPE  = 1
) (
    input  wire             clk,
    input  wire             rst,
    input  wire             ws,
    input  wire             clr,
    input  wire [IN_W-1:0]  a_in,
    input  wire             v_in,
    input  wire             last_in,
    output wire [IN_W-1:0]  a_q,
    output wire             v_q,
    output wire             last_q,
    input  wire [W_W-1:0]   w_in,
    input  wire             w_ld,
    output wire [W_W-1:0]   w_q,
    input  wire [ACC_W-1:0] psum_in,
    output wire [ACC_W-1:0] acc_q,
    output wire             pre_v,
    output wire             out_v,
    output wire             out_last
);
    pe #(.PE_TYPE(1), .IN_W(IN_W), .W_W(W_W), .ACC_W(ACC_W), .PIPE(PIPE)) u_pe (
        .clk(clk), .rst(rst), .ws(ws), .clr(clr),
        .a_in(a_in), .v_in(v_in), .last_in(last_in), .a_q(a_q), .v_q(v_q), .last_q(last_q),
        .w_in(w_in), .w_ld(w_ld), .w_q(w_q),
        .psum_in(psum_in), .acc_q(acc_q), .pre_v(pre_v), .out_v(out_v), .out_last(out_last));
endmodule
`default_nettype wire
